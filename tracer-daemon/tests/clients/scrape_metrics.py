"""Scrapes the agent's /metrics and parses it with the Prometheus client library's own
OpenMetrics parser (strict: a malformed exposition raises). Prints the samples as JSON:
[{"name": ..., "labels": {...}, "value": ...}, ...] plus each family's type."""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

url = sys.argv[1]
with urllib.request.urlopen(url, timeout=10) as response:
    content_type = response.headers.get("Content-Type", "")
    text = response.read().decode("utf-8")

families = []
samples = []
for family in text_string_to_metric_families(text):
    families.append({"name": family.name, "type": family.type, "unit": family.unit})
    for sample in family.samples:
        samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value})
print(json.dumps({"content_type": content_type, "families": families, "samples": samples}))
