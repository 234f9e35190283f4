"""Grafana dashboards as code: typed builders (grafana-foundation-sdk) over the relations of
docs/data-model.md, rendered into deploy/grafana/dashboards/ and publishable to a running Grafana."""
