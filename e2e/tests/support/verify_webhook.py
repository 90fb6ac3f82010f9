"""Checks webhook messages with the Standard Webhooks reference library.

Reads a JSON list of {"secret", "headers", "body"} on stdin and prints, for
each, the verified payload as JSON or {"error": "..."}; the Rust test decides
which outcome it expected.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

results = []
for message in json.load(sys.stdin):
    try:
        payload = Webhook(message["secret"]).verify(message["body"], message["headers"])
        results.append({"payload": payload})
    except WebhookVerificationError as e:
        results.append({"error": str(e) or type(e).__name__})
json.dump(results, sys.stdout)
