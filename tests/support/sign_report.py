"""Signs a delivery report the way its provider does, with the provider's own published SDK, so that
herald's checks are tested against the provider's algorithm and not against a reading of it.

Reads one JSON request on stdin and prints one JSON answer:
  {"provider": "vonage", "secret", "method": "md5hash"|"md5"|"sha1"|"sha256"|"sha512", "params": {...}}
      -> {"sig": ...}            (vonage 3.x, Client.signature)
  {"provider": "plivo", "auth_token", "url", "nonce", "params": {...}}
      -> {"signature": ...}      (plivo-python, utils.signature_v3; checked with validate_v3_signature)
"""

import json
import sys
import warnings


def vonage_sig(request):
    warnings.simplefilter("ignore")  # vonage 3.x warns that it is deprecated
    import vonage

    method = request["method"]
    client = vonage.Client(
        key="unused",
        secret="unused",
        signature_secret=request["secret"],
        signature_method=None if method == "md5hash" else method,
    )
    return {"sig": client.signature(dict(request["params"]))}


def plivo_signature(request):
    from plivo.utils.signature_v3 import construct_post_url, get_signature_v3, validate_v3_signature

    token, url, nonce, params = request["auth_token"], request["url"], request["nonce"], request["params"]
    signed = construct_post_url(url, dict(params))
    signature = get_signature_v3(token.encode(), signed, nonce.encode()).decode()
    assert validate_v3_signature("POST", url, nonce, token, signature, dict(params))
    return {"signature": signature}


def main():
    request = json.load(sys.stdin)
    answer = {"vonage": vonage_sig, "plivo": plivo_signature}[request["provider"]](request)
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
