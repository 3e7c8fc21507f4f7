"""Scrapes wharfd's /metrics and parses it with the official Prometheus Python client's text
parser (prometheus_client.parser), as a Prometheus server would read it.

    prometheus_parse.py URL

Prints one JSON document: {"types": {family: type}, "samples": [[name, labels, value], ...]}.
A malformed exposition makes the parser raise, and the script exits non-zero.
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

url = sys.argv[1]
with urllib.request.urlopen(url, timeout=30) as response:
    content_type = response.headers.get("Content-Type", "")
    text = response.read().decode("utf-8")

types = {}
samples = []
for family in text_string_to_metric_families(text):
    types[family.name] = family.type
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])

print(json.dumps({"content_type": content_type, "types": types, "samples": samples}))
