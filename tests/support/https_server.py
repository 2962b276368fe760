#!/usr/bin/env python3
"""A Twilio-shaped HTTPS server for herald's TLS test, with a certificate from a throwaway CA (trustme).

Prints JSON lines on stdout: {"ready": <port>} once listening, then one object per request:
{"path", "authorization", "proxy_authorization", "body"}. Answers every POST like Twilio's Messages resource: 201 with a sid.

--ca-out PATH   where to write the test CA (PEM) that signs the server certificate
"""
import argparse
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trustme


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        print(json.dumps({
            "path": self.path,
            "authorization": self.headers.get("Authorization"),
            "proxy_authorization": self.headers.get("Proxy-Authorization"),
            "body": body.decode("utf-8", "replace"),
        }), flush=True)
        answer = b'{"sid": "SMtls0123456789abcdef0123456789ab", "status": "queued"}'
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ca-out", required=True)
    args = parser.parse_args()
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(args.ca_out)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(json.dumps({"ready": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
