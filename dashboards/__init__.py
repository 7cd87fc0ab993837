"""Grafana dashboards as code: built with grafana-foundation-sdk, the JSON committed beside them.

`python -m dashboards.build` (or `make dashboards`) writes `dashboards/json/*.json`, the files
Grafana provisions (`deploy/grafana/`). Edit the modules, not the JSON: a test fails when the
committed JSON differs from what they build.

- `overview`: is each service healthy, and why do its conditional writes fail?
- `deploys`: did a deploy make it worse?
- `conflicts`: races, stale ETags, retries, rewrites and the resources they pile up on.
- `collector_health`: is the collector itself keeping up?

`panels` holds what they share: the variables, the panel constructors that make every panel
carry a title, a description, a unit and `$datasource`, the cause colours and the links to the
collector's drill-down pages.
"""
