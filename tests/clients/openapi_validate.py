"""Fetches wharfd's OpenAPI document and validates it against the OpenAPI specification
with openapi-spec-validator (the version the document declares, 3.1).

    openapi_validate.py URL

Prints one JSON document: {"openapi": version, "operations": [[method, path], ...]}. An
invalid document makes the validator raise, and the script exits non-zero.
"""

import json
import sys
import urllib.request

from openapi_spec_validator import validate

url = sys.argv[1]
with urllib.request.urlopen(url, timeout=30) as response:
    document = json.loads(response.read().decode("utf-8"))

validate(document)

methods = ("get", "put", "post", "delete", "patch", "head", "options")
operations = [
    [method, path]
    for path, item in sorted(document["paths"].items())
    for method in methods
    if method in item
]
print(json.dumps({"openapi": document["openapi"], "operations": operations}))
