#!/usr/bin/env python3
"""Twilio status-callback signatures as twilio-python's own RequestValidator computes and checks them.

Reads a JSON list on stdin, each {"token", "signed_url", "configured", "params": [[name, value], ...]}, and
prints a JSON list: for each, {"signature": compute_signature(signed_url, params), "valid":
validate(configured, params, that signature)}. Repeated names are passed as a multi-valued form (Django's
QueryDict shape, `getlist`), as a web framework hands them to the validator.
"""
import json
import sys

from twilio.request_validator import RequestValidator


class Form(dict):
    """name -> [values], read by RequestValidator.get_values through getlist."""

    def getlist(self, name):
        return self[name]


def main():
    answers = []
    for case in json.load(sys.stdin):
        form = Form()
        for name, value in case["params"]:
            form.setdefault(name, []).append(value)
        validator = RequestValidator(case["token"])
        signature = validator.compute_signature(case["signed_url"], form)
        answers.append({
            "signature": signature,
            "valid": validator.validate(case["configured"], form, signature),
        })
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
