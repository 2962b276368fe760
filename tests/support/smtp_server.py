#!/usr/bin/env python3
"""A real SMTP server for herald's tests, built on aiosmtpd.

Prints JSON lines on stdout: {"ready": <port>} once listening, then one object per accepted message:
{"mail_from", "rcpt_tos", "data", "auth", "helo"} (the name the client gave in EHLO/HELO). The recipient's local part steers failures:
tempfail@ -> 451, reject@ -> 550, hang@ -> no answer to RCPT at all, slow…@ -> the message is accepted
after 4.5 s (a relay slower than herald's connection slots can serve), reply-<code>[-<enhanced>]@ -> that
reply to RCPT (reply-550-5.7.1@ -> "550 5.7.1 …", reply-552@ -> "552 …"), as a relay or a mailbox refuses.

--mode plain | ascii (plain, without SMTPUTF8, like an older relay) | starttls (STARTTLS required before MAIL)
       | smtps (implicit TLS)
--auth user:pass   require AUTH with these credentials
--ca-out PATH      where to write the test CA (PEM) that signs the server certificate
"""
import argparse
import asyncio
import json
import signal
import socket
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local == "tempfail":
            return "451 4.3.0 Try again later"
        if local == "reject":
            return "550 5.1.1 No such user here"
        if local.startswith("reply-"):
            parts = local.split("-")[1:]
            code = parts[0]
            enhanced = (parts[1] + " ") if len(parts) > 1 else ""
            return f"{code} {enhanced}Refused by the test server"
        if local == "hang":
            await asyncio.sleep(3600)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if any(r.split("@")[0].startswith("slow") for r in envelope.rcpt_tos):
            await asyncio.sleep(4.5)
        print(json.dumps({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
            "auth": bool(getattr(session, "authenticated", False)),
            "helo": session.host_name,
        }), flush=True)
        return "250 2.0.0 Ok: queued"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="plain", choices=["plain", "ascii", "starttls", "smtps"])
    parser.add_argument("--auth")
    parser.add_argument("--ca-out")
    args = parser.parse_args()

    kwargs = {}
    context = None
    if args.mode not in ("plain", "ascii"):
        import trustme
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        if args.ca_out:
            ca.cert_pem.write_to_path(args.ca_out)
    if args.mode == "starttls":
        kwargs.update(tls_context=context, require_starttls=True)
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and \
                auth_data.login.decode() == user and auth_data.password.decode() == password
            # handled=False: aiosmtpd then answers a failure "535 5.7.8 Authentication credentials invalid"
            # as a relay does (with the default it answers nothing, and the client waits).
            return AuthResult(success=ok, handled=False)

        # aiosmtpd only counts STARTTLS as TLS; with implicit TLS the whole session is encrypted anyway.
        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=args.mode == "starttls")

    # aiosmtpd's Controller offers SMTPUTF8 unless told not to.
    kwargs.update(enable_SMTPUTF8=args.mode != "ascii")
    port = free_port()
    controller = Controller(
        Handler(), hostname="127.0.0.1", port=port,
        ssl_context=context if args.mode == "smtps" else None,
        server_hostname="127.0.0.1",
        **kwargs,
    )
    controller.start()
    print(json.dumps({"ready": port}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Exit with the test process: stdin closes when the parent goes away.
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
