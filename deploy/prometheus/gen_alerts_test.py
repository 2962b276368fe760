#!/usr/bin/env python3
"""Writes alerts.test.yml: promtool tests of alerts.yml against modelled traffic.

    python3 gen_alerts_test.py > alerts.test.yml
    python3 gen_alerts_test.py 7 > /tmp/t.yml   # the same models with other noise (not committed)

Each scenario models what Prometheus scrapes from a herald replica every 30 s over hours: counters that
appear with their first event (as herald's do), Poisson noise around a slowly varying rate, restarts that
reset counters, a killed process whose series go stale. Each test checks the alerts at the moments that
matter and, through the ALERTS series, which alerts fired at any time of the scenario. Deterministic
(seeded; only random.random(), whose sequence Python keeps stable), standard library only. tests/it/alerts.rs
checks that the committed file is this script's output.
"""

import math
import random
import sys

STEP = 30  # seconds between scrapes, and between rule evaluations
# Other noise for the same models (`gen_alerts_test.py 7`): the tests must not depend on one draw.
SEED_OFFSET = int(sys.argv[1]) if len(sys.argv) > 1 else 0

# Steady traffic of a young deployment: ~2 SMS/s into +1, +44, +49 (per second).
SMS = {"1": 1.2, "44": 0.5, "49": 0.3}
VOICE = {"1": 0.05}
EMAIL = 0.5
REJECTED = 0.01  # invalid or unreachable numbers the carrier refuses, country 1
THROTTLED = {"user": 0.01, "recipient": 0.005}  # users asking again and again
PREMIUM = ["882", "241", "370"]  # the pumping targets (never sent to before)

SUMMARY = {
    "HeraldSmsSpike": "SMS sends are more than 3x their baseline",
    "HeraldVoiceSpike": "Voice calls are more than 3x their baseline",
    "HeraldPhoneCountrySpike": "Phone messages to country code {country} are more than 5x their baseline",
    "HeraldNewDestinationCountry": "Phone messages to country code {country}, a destination herald had not sent to before",
    "HeraldThrottledSurge": "Throttled jobs are more than 5x their baseline: limits are holding something back",
    "HeraldBlockedDestinationSurge": "Many jobs to denied countries: someone is trying blocked destinations",
    "HeraldHighFailureRatio": "More than 20% of jobs fail at the provider",
    "HeraldDown": "herald target {instance} is down, or no herald target is scraped at all",
    "HeraldNotConsuming": "herald {instance} has not been consuming from RabbitMQ for 5 minutes",
    "HeraldThrottleRedisUnavailable": "herald {instance} throttles with local limiters: Redis is unreachable",
    "HeraldOutcomeStoreFailing": "herald {instance} cannot use its outcome store: duplicate protection is off",
}
SEVERITY = {
    "HeraldSmsSpike": "critical",
    "HeraldVoiceSpike": "critical",
    "HeraldPhoneCountrySpike": "critical",
    "HeraldNewDestinationCountry": "warning",
    "HeraldThrottledSurge": "warning",
    "HeraldBlockedDestinationSurge": "warning",
    "HeraldHighFailureRatio": "warning",
    "HeraldDown": "critical",
    "HeraldNotConsuming": "critical",
    "HeraldThrottleRedisUnavailable": "warning",
    "HeraldOutcomeStoreFailing": "critical",
}


def minutes(m):
    return int(m * 60 // STEP)


def duration(step):
    """A step as promtool's duration: 2h5m30s."""
    s = step * STEP
    out = ""
    for unit, n in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= n:
            out += f"{s // n}{unit}"
            s %= n
    return out or "0s"


class Replica:
    """What one herald replica exports, scrape by scrape."""

    def __init__(self, seed, steps, instance="herald-0"):
        self.rng = random.Random(seed + SEED_OFFSET)
        self.steps = steps
        self.instance = instance
        self.alive = [True] * steps  # scraped successfully
        self.starts = {0}  # steps at which a process starts (counters from zero, lazy series gone)
        self.target = [True] * steps  # Prometheus has the target at all
        self.incs = {}  # (metric, labels) -> events per step
        # Counters herald exports at 0 from its start; the others appear with their first event.
        self.eager = {("herald_throttle_local_fallback_total", "")}
        self.eager |= {("herald_store_errors_total", f'op="{op}"') for op in ("get", "put", "mark", "claim")}
        for metric, labels in self.eager:
            self.counter(metric, labels)

    def counter(self, metric, labels):
        return self.incs.setdefault((metric, labels), [0] * self.steps)

    def poisson(self, lam):
        if lam <= 0:
            return 0
        if lam < 30:
            limit, k, p = math.exp(-lam), 0, 1.0
            while True:
                p *= self.rng.random()
                if p <= limit:
                    return k
                k += 1
        # Box-Muller: normal approximation of a large Poisson count.
        u1, u2 = self.rng.random() or 1e-12, self.rng.random()
        z = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
        return max(0, round(lam + z * math.sqrt(lam)))

    def traffic(self, metric, labels, rate, start=0, end=None, wave=True):
        """Events at `rate` per second from step `start` to `end`, varying by ±15% over two hours."""
        incs = self.counter(metric, labels)
        for i in range(start, self.steps if end is None else end):
            r = rate * (1 + 0.15 * math.sin(2 * math.pi * i * STEP / 7200)) if wave else rate
            incs[i] += self.poisson(r * STEP)

    def steady(self, start=0, end=None, skip_sms=()):
        """A deployment's normal traffic."""
        for country, rate in SMS.items():
            if country not in skip_sms:
                self.traffic("gd_send_sms_total", sms_labels(country), rate, start, end)
        for country, rate in VOICE.items():
            self.traffic("gd_send_voice_total", sms_labels(country), rate, start, end)
        self.traffic(
            "gd_send_email_total",
            'country="none",provider="smtp",action="second-factor-authentication"',
            EMAIL,
            start,
            end,
        )
        self.traffic("gd_send_sms_failure_total", failure_labels("1", "provider_rejected"), REJECTED, start, end)
        for scope, rate in THROTTLED.items():
            self.traffic("gd_send_throttled_total", f'channel="sms",scope="{scope}"', rate, start, end)

    def restart(self, step, down_steps=1):
        """The process dies at `step` and a new one is scraped `down_steps` later."""
        for i in range(step, step + down_steps):
            self.alive[i] = False
        self.starts.add(step + down_steps)

    def kill(self, step):
        for i in range(step, self.steps):
            self.alive[i] = False

    def remove_target(self, step):
        for i in range(step, self.steps):
            self.target[i] = False

    def series(self):
        """(series, values) for promtool."""
        job = f'instance="{self.instance}",job="herald"'
        up = []
        for i in range(self.steps):
            if self.target[i]:
                up.append(1 if self.alive[i] else 0)
            else:
                up.append("stale" if i > 0 and self.target[i - 1] else "_")
        out = [(f"up{{{job}}}", up)]
        out.append((name("herald_broker_connected", "", job), self.exported([1] * self.steps, eager=True)))
        for (metric, labels), incs in sorted(self.incs.items()):
            values = self.exported(self.totals(incs), eager=(metric, labels) in self.eager)
            out.append((name(metric, labels, job), values))
        return [(s, v) for s, v in out if any(x != "_" for x in v)]

    def totals(self, incs):
        """A counter's values: its events since the process started."""
        values, total = [], 0
        for i, n in enumerate(incs):
            total = (0 if i in self.starts else total) + n
            values.append(total)
        return values

    def exported(self, values, eager):
        """Scrape by scrape: missing until a series exists in the process, stale when the process dies."""
        out, exists = [], False
        for i, v in enumerate(values):
            if i in self.starts:
                exists = False
            if not self.alive[i]:
                out.append("stale" if exists else "_")
                exists = False
                continue
            exists = exists or eager or v > 0
            out.append(v if exists else "_")
        return out


def sms_labels(country):
    return f'country="{country}",provider="twilio",action="second-factor-authentication"'


def failure_labels(country, reason, provider="twilio"):
    return f'country="{country}",provider="{provider}",reason="{reason}"'


def name(metric, labels, job):
    return f"{metric}{{{','.join(x for x in (labels, job) if x)}}}"


def compress(values):
    """promtool's expanding notation for runs: `_x3`, `5x2` (three 5s)."""
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i] and values[i] != "stale":
            j += 1
        n = j - i + 1
        if n == 1:
            out.append(str(values[i]))
        elif values[i] == "_":
            out.append(f"_x{n}")
        else:
            out.append(f"{values[i]}x{n - 1}")
        i = j + 1
    return " ".join(out)


def alert(alertname, **labels):
    summary = SUMMARY[alertname].format(country=labels.get("country", ""), instance=labels.get("instance", ""))
    labels = {"severity": SEVERITY[alertname], **labels}
    return {
        "name": alertname,
        "labels": labels,
        "summary": summary,
        "runbook": f"deploy/prometheus/README.md#{alertname.lower()}",
    }


class Test:
    def __init__(self, name, comment, replica):
        self.name = name
        self.comment = comment
        self.replica = replica
        self.checks = []  # (step, alertname, [alerts])
        self.ever = ()

    def expect(self, step, alertname, *alerts):
        self.checks.append((step, alertname, list(alerts)))

    def quiet(self, step, *alertnames):
        for a in alertnames:
            self.expect(step, a)

    def fired(self, *alerts):
        """Exactly these alerts fired at some time of the scenario (and no other)."""
        self.ever = alerts

    def render(self):
        lines = [f"  # {line}" if line else "  #" for line in self.comment.strip().split("\n")]
        lines += [f"  - name: {self.name}", f"    interval: {STEP}s", "    input_series:"]
        for series, values in self.replica.series():
            lines.append(f"      - series: '{series}'")
            lines.append(f"        values: '{compress(values)}'")
        lines.append("    alert_rule_test:")
        for step, alertname, alerts in self.checks:
            if not alerts:
                lines.append(f"      - {{eval_time: {duration(step)}, alertname: {alertname}, exp_alerts: []}}")
                continue
            lines += [f"      - eval_time: {duration(step)}", f"        alertname: {alertname}", "        exp_alerts:"]
            for a in sorted(alerts, key=lambda a: sorted(a["labels"].items())):
                labels = ", ".join(f"{k}: {quote(v)}" for k, v in sorted(a["labels"].items()))
                lines.append(f"          - exp_labels: {{{labels}}}")
                lines.append("            exp_annotations:")
                lines.append(f'              summary: "{a["summary"]}"')
                lines.append(f'              runbook_url: "{a["runbook"]}"')
        end = duration(self.replica.steps - 1)
        lines += [
            "    promql_expr_test:",
            "      # Every alert that fired at any time of the scenario.",
            "      - expr: count by (alertname, country, instance, job) "
            + f'(max_over_time(ALERTS{{alertstate="firing"}}[{end}]))',
            f"        eval_time: {end}",
        ]
        if not self.ever:
            lines.append("        exp_samples: []")
        else:
            lines.append("        exp_samples:")
            for a in sorted(self.ever, key=lambda a: sorted(a["labels"].items())):
                labels = {k: v for k, v in a["labels"].items() if k != "severity"}
                labels["alertname"] = a["name"]
                text = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                lines.append(f"          - labels: '{{{text}}}'")
                lines.append("            value: 1")
        return "\n".join(lines)


def quote(v):
    return f'"{v}"' if v.isdigit() or not v.isidentifier() else v


TOLL_FRAUD = [
    "HeraldSmsSpike",
    "HeraldVoiceSpike",
    "HeraldPhoneCountrySpike",
    "HeraldNewDestinationCountry",
    "HeraldThrottledSurge",
    "HeraldBlockedDestinationSurge",
    "HeraldHighFailureRatio",
]


def steady_fresh():
    r = Replica(1, minutes(180) + 1)
    r.steady()
    t = Test(
        "a fresh deployment's steady traffic raises nothing",
        """
Three hours of ~2 SMS/s into +1, +44, +49 from herald's first scrape on: no baseline yet at first, then
a growing one; nothing may fire at any time.
""",
        r,
    )
    for m in (15, 31, 180):
        t.quiet(minutes(m), *TOLL_FRAUD, "HeraldDown")
    t.fired()
    return t


def cutover():
    r = Replica(8, minutes(180) + 1)
    r.steady(start=minutes(60))
    t = Test(
        "traffic cut over to a herald that was idle for an hour",
        """
herald is scraped for an hour before any traffic reaches it, then takes ~2 SMS/s at once: its history
starts with its traffic, so nothing is a spike and no country of the first minute is new.
""",
        r,
    )
    for m in (61, 75, 91, 180):
        t.quiet(minutes(m), *TOLL_FRAUD)
    t.fired()
    return t


def pumping(at, seed):
    """Steady traffic, and from minute `at` 5 minutes of pumping: 20 SMS/s into three new premium
    countries, most of the attack throttled (prefix limits), some of it to a denied country."""
    end = at + 60
    r = Replica(seed, minutes(end) + 1)
    r.steady()
    a, b = minutes(at), minutes(at + 5)
    for country in PREMIUM:
        r.traffic("gd_send_sms_total", sms_labels(country), 20 / 3, a, b, wave=False)
    r.traffic("gd_send_throttled_total", 'channel="sms",scope="prefix"', 30, a, b, wave=False)
    r.traffic(
        "gd_send_sms_failure_total", failure_labels("225", "blocked_destination", "none"), 1, a, b, wave=False
    )
    return r, a


def pumping_established():
    r, a = pumping(120, 2)
    t = Test(
        "pumping into new premium countries on a deployment with history",
        """
Two hours of steady traffic, then 5 minutes of pumping at 20 SMS/s into +882, +241, +370 (never sent to),
with most of the attack throttled and some of it to a denied country. Caught within 5 minutes as a new
destination, a country spike, an SMS spike, a throttled and a blocked surge; the normal countries stay silent.
""",
        r,
    )
    new = [alert("HeraldNewDestinationCountry", country=c) for c in PREMIUM]
    spike = [alert("HeraldPhoneCountrySpike", country=c) for c in PREMIUM]
    t.quiet(a - 1, *TOLL_FRAUD)
    t.expect(a + 1, "HeraldNewDestinationCountry", *new)
    t.expect(a + minutes(5), "HeraldNewDestinationCountry", *new)
    t.expect(a + minutes(5), "HeraldPhoneCountrySpike", *spike)
    t.expect(a + minutes(5), "HeraldSmsSpike", alert("HeraldSmsSpike"))
    t.expect(a + minutes(5), "HeraldThrottledSurge", alert("HeraldThrottledSurge"))
    t.expect(a + minutes(5), "HeraldBlockedDestinationSurge", alert("HeraldBlockedDestinationSurge"))
    t.quiet(a + minutes(5), "HeraldHighFailureRatio", "HeraldVoiceSpike")
    # An hour after their first message the premium countries count as seen.
    t.quiet(a + minutes(61), *TOLL_FRAUD)
    t.fired(
        *new,
        *spike,
        alert("HeraldSmsSpike"),
        alert("HeraldThrottledSurge"),
        alert("HeraldBlockedDestinationSurge"),
    )
    return t


def pumping_young():
    r, a = pumping(10, 3)
    t = Test(
        "pumping into new premium countries 10 minutes after a fresh deployment",
        """
The attack of the issue (#19): 10 minutes of normal traffic on a fresh deployment, then the burst. Too
little history for the spike alerts to judge; the new destinations are caught at once, and the normal
countries never.
""",
        r,
    )
    new = [alert("HeraldNewDestinationCountry", country=c) for c in PREMIUM]
    t.quiet(a - 1, *TOLL_FRAUD)
    t.expect(a + 1, "HeraldNewDestinationCountry", *new)
    t.expect(a + minutes(5), "HeraldNewDestinationCountry", *new)
    t.expect(a + minutes(5), "HeraldBlockedDestinationSurge", alert("HeraldBlockedDestinationSurge"))
    t.quiet(a + minutes(5), "HeraldSmsSpike", "HeraldPhoneCountrySpike", "HeraldThrottledSurge")
    t.fired(*new, alert("HeraldBlockedDestinationSurge"))
    return t


def one_message():
    at = minutes(240)
    r = Replica(4, at + minutes(70) + 1)
    r.steady()
    # herald restarts at 2h: counters start over, and each series comes back with its next event.
    r.restart(minutes(120), down_steps=1)
    r.counter("gd_send_sms_total", sms_labels("373"))[at] = 1
    t = Test(
        "one message to a new country after hours of steady traffic",
        """
Four hours of steady traffic (with a herald restart at 2h: counters start over, series come back with
their next message, and no country is new again), then a single SMS to +373. Caught from its first
scrape, for an hour.
""",
        r,
    )
    new = alert("HeraldNewDestinationCountry", country="373")
    t.quiet(at - 1, *TOLL_FRAUD)
    t.expect(at + 1, "HeraldNewDestinationCountry", new)
    t.expect(at + minutes(59), "HeraldNewDestinationCountry", new)
    t.quiet(at + minutes(5), "HeraldPhoneCountrySpike", "HeraldSmsSpike")
    t.quiet(at + minutes(61), "HeraldNewDestinationCountry")
    t.fired(new)
    return t


def outage_during_attack():
    at = minutes(60)
    end = at + minutes(40)
    r = Replica(5, end + 1)
    outage, over = at + minutes(2), at + minutes(10)
    back = outage + minutes(15)
    r.steady(end=outage)
    r.steady(start=outage, skip_sms=SMS)
    # A 10-minute attack, most of it throttled; 2 minutes in the SMS provider goes down for 15 minutes.
    for country in PREMIUM:
        r.traffic("gd_send_sms_total", sms_labels(country), 20 / 3, at, outage, wave=False)
    r.traffic("gd_send_throttled_total", 'channel="sms",scope="prefix"', 100, at, over, wave=False)
    # Meanwhile every SMS fails once its attempts are used up (30 s on), or expires.
    jobs = {**SMS, **{c: 20 / 3 for c in PREMIUM}}
    for country, rate in jobs.items():
        stop = (over if country in PREMIUM else back) + 1
        exhausted, expired = failure_labels(country, "attempts_exhausted"), failure_labels(country, "expired", "none")
        r.traffic("gd_send_sms_failure_total", exhausted, rate * 0.7, outage + 1, stop)
        r.traffic("gd_send_sms_failure_total", expired, rate * 0.3, outage + 1, stop)
    for country, rate in SMS.items():
        r.traffic("gd_send_sms_total", sms_labels(country), rate, back)
    t = Test(
        "a provider outage during an attack",
        """
An hour of steady traffic, then a 10-minute attack (most of it throttled); 2 minutes in, the SMS provider
goes down for 15 minutes and jobs fail with attempts_exhausted (or expire). Throttled jobs are not in
the ratio, so it fires while the attack still runs. The attack itself is caught as in the tests above.
""",
        r,
    )
    t.quiet(at - 1, *TOLL_FRAUD)
    t.expect(at + minutes(6), "HeraldHighFailureRatio", alert("HeraldHighFailureRatio"))
    t.expect(back, "HeraldHighFailureRatio", alert("HeraldHighFailureRatio"))
    t.quiet(back + minutes(8), "HeraldHighFailureRatio")
    t.fired(
        alert("HeraldHighFailureRatio"),
        *[alert("HeraldNewDestinationCountry", country=c) for c in PREMIUM],
        *[alert("HeraldPhoneCountrySpike", country=c) for c in PREMIUM],
        alert("HeraldSmsSpike"),
        alert("HeraldThrottledSurge"),
    )
    return t


def voice_pumping():
    at = minutes(60)
    r = Replica(7, at + minutes(20) + 1)
    r.steady()
    r.traffic("gd_send_voice_total", sms_labels("44"), 1, at, at + minutes(10), wave=False)
    t = Test(
        "voice pumping into premium ranges of a served country",
        """
An hour of steady traffic, then 10 minutes of calls at 1/s to +44 (served: its SMS go on as before, no
voice call there so far). The country is not new, but its phone traffic is far over its baseline.
""",
        r,
    )
    t.quiet(at - 1, *TOLL_FRAUD)
    t.expect(at + minutes(5), "HeraldVoiceSpike", alert("HeraldVoiceSpike"))
    t.expect(at + minutes(5), "HeraldPhoneCountrySpike", alert("HeraldPhoneCountrySpike", country="44"))
    t.quiet(at + minutes(5), "HeraldSmsSpike", "HeraldNewDestinationCountry")
    t.fired(alert("HeraldVoiceSpike"), alert("HeraldPhoneCountrySpike", country="44"))
    return t


def killed():
    at = minutes(60)
    gone = at + minutes(30)
    r = Replica(6, gone + minutes(10) + 1)
    r.steady(end=at)
    r.kill(at)
    r.remove_target(gone)
    t = Test(
        "herald killed",
        """
An hour of steady traffic, then herald is killed: its scrapes fail (up 0) and its series go stale.
HeraldDown fires within 2 minutes; when the target is removed as well (a Deployment scaled to zero, a
lost ServiceMonitor), it fires for the missing job. Nothing else fires.
""",
        r,
    )
    t.quiet(at - 1, "HeraldDown")
    t.quiet(at + 1, "HeraldDown")
    t.expect(at + minutes(2), "HeraldDown", alert("HeraldDown", instance="herald-0", job="herald"))
    t.expect(gone + minutes(2), "HeraldDown", alert("HeraldDown", job="herald"))
    t.quiet(gone + minutes(2), *TOLL_FRAUD, "HeraldNotConsuming")
    t.fired(alert("HeraldDown", instance="herald-0", job="herald"), alert("HeraldDown", job="herald"))
    return t


OPERATIONS = """
  # The operations alerts on their own signals (herald keeps being scraped).
  - name: herald loses the broker, then Redis
    interval: 1m
    input_series:
      - series: 'herald_broker_connected{instance="herald-0"}'
        values: '1x30 0x30'
      - series: 'herald_throttle_local_fallback_total{instance="herald-0"}'
        values: '0x30 0+10x30'
      - series: 'herald_store_errors_total{instance="herald-0",op="put"}'
        values: '0x30 0+20x30'
      - series: 'up{instance="herald-0",job="herald"}'
        values: '1x60'
    alert_rule_test:
      - eval_time: 33m
        alertname: HeraldNotConsuming
        exp_alerts: []
      - eval_time: 45m
        alertname: HeraldNotConsuming
        exp_alerts:
          - exp_labels: {severity: critical, instance: herald-0}
            exp_annotations:
              summary: "herald herald-0 has not been consuming from RabbitMQ for 5 minutes"
              runbook_url: "deploy/prometheus/README.md#heraldnotconsuming"
      - eval_time: 45m
        alertname: HeraldThrottleRedisUnavailable
        exp_alerts:
          - exp_labels: {severity: warning, instance: herald-0}
            exp_annotations:
              summary: "herald herald-0 throttles with local limiters: Redis is unreachable"
              runbook_url: "deploy/prometheus/README.md#heraldthrottleredisunavailable"
      - eval_time: 33m
        alertname: HeraldOutcomeStoreFailing
        exp_alerts: []
      - eval_time: 45m
        alertname: HeraldOutcomeStoreFailing
        exp_alerts:
          - exp_labels: {severity: critical, instance: herald-0}
            exp_annotations:
              summary: "herald herald-0 cannot use its outcome store: duplicate protection is off"
              runbook_url: "deploy/prometheus/README.md#heraldoutcomestorefailing"
      - {eval_time: 45m, alertname: HeraldDown, exp_alerts: []}
"""


def main():
    tests = [
        steady_fresh(),
        cutover(),
        pumping_established(),
        pumping_young(),
        one_message(),
        outage_during_attack(),
        voice_pumping(),
        killed(),
    ]
    out = [
        "# promtool test rules alerts.test.yml",
        "# Generated by gen_alerts_test.py (python3 gen_alerts_test.py > alerts.test.yml); do not edit by hand.",
        "# Traffic models scraped every 30 s, rules evaluated as often; see the script for the models.",
        "rule_files:",
        "  - alerts.yml",
        f"evaluation_interval: {STEP}s",
        "",
        "tests:",
    ]
    for t in tests:
        out.append(t.render())
        out.append("")
    out.append(OPERATIONS.strip("\n"))
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
