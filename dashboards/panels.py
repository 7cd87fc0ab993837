"""What the dashboards share: variables, panel constructors, cause colours, drill-down links.

Every panel is made by one of the constructors here, which take a title, a description and a
unit as required arguments and point the panel at `$datasource`: the rules that
`tests/test_dashboards.py` checks are kept by construction, and checked anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import heatmap as gh
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import statetimeline as gst
from grafana_foundation_sdk.builders import table as gt
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

from alerts.build import OBJECTIVE
from collector.api.causes import CAUSES

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
# The error budget of the burn-rate alerts (alerts/build.py), as a ratio of conditional requests.
BUDGET = round(1 - OBJECTIVE, 10)
# Matchers every query of a service dashboard carries, so the variables filter every panel.
SERVICE = 'service=~"$service"'
ROUTE = 'route=~"$route"'
INSTANCE = 'instance=~"$instance"'
# The drill-down pages, as the browser that shows Grafana reaches the collector.
COLLECTOR_URL = "${collector_url}"
DEFAULT_COLLECTOR_URL = "http://localhost:8080"
TAGS = ["precondition-watch"]


# -- dashboards and variables -----------------------------------------------------------------


def dashboard(uid: str, title: str, description: str) -> gd.Dashboard:
    """A dashboard with the house defaults: last hour, refreshed every 30 s, shared crosshair."""
    return (
        gd.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("utc")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .editable()
        .link(
            gd.DashboardLink("Precondition Watch")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(
            gd.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .description("The Prometheus that scrapes the collector.")
        )
    )


def label_variable(name: str, label: str, query: str, description: str) -> gd.QueryVariable:
    """A multi-value variable of a label's values, `All` meaning any value (even none)."""
    return (
        gd.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query({"qryType": 1, "query": query, "refId": f"{name}-values"})
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text="All", value="$__all"))
    )


def with_service_variables(board: gd.Dashboard) -> gd.Dashboard:
    """`$service` and `$route` (of the services selected), and where the drill-down pages are."""
    return (
        board.with_variable(
            label_variable(
                "service",
                "Service",
                "label_values(precondition_requests_total, service)",
                "Services that answered conditional requests.",
            )
        )
        .with_variable(
            label_variable(
                "route",
                "Route",
                f"label_values(precondition_requests_total{{{SERVICE}}}, route)",
                "Route templates of the selected services.",
            )
        )
        .with_variable(
            gd.TextBoxVariable("collector_url")
            .label("Collector")
            .description("The collector's URL as your browser reaches it: links open its pages.")
            .default_value(DEFAULT_COLLECTOR_URL)
        )
    )


# -- queries ----------------------------------------------------------------------------------


def query(
    expr: str,
    legend: str = "",
    *,
    exemplar: bool = False,
    instant: bool = False,
    fmt: pm.PromQueryFormat | None = None,
) -> gp.Dataquery:
    """A PromQL target; the panel constructors give it its refId and datasource."""
    target = gp.Dataquery().expr(expr).legend_format(legend or "__auto").exemplar(exemplar)
    target = target.instant() if instant else target.range()
    if fmt is not None:
        target = target.format(fmt)
    return target


def _targets(targets: Sequence[gp.Dataquery]) -> list[cogbuilder.Builder[Any]]:
    return [t.ref_id(chr(ord("A") + i)).datasource(DATASOURCE) for i, t in enumerate(targets)]


# -- links to the drill-down pages ------------------------------------------------------------


def service_page(field: str = "${__field.labels.service}") -> gd.DashboardLink:
    """A data link to the collector's page of the service a series or row belongs to."""
    return (
        gd.DashboardLink("Open ${__field.labels.service} in the collector")
        .url(f"{COLLECTOR_URL}/ui/services/{field}")
        .target_blank(True)
    )


def table_service_page(anchor: str = "") -> gd.DashboardLink:
    """A data link from a table row's `service` column to the service page."""
    return (
        gd.DashboardLink("Open ${__data.fields.service} in the collector")
        .url(f"{COLLECTOR_URL}/ui/services/${{__data.fields.service}}{anchor}")
        .target_blank(True)
    )


# -- colours ----------------------------------------------------------------------------------


def _colour(colour: str) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})


def cause_overrides(panel: Any, legend_prefix: bool = False) -> Any:
    """Give each cause's series the colour the drill-down pages use for it.

    With `legend_prefix`, series are named `<cause> <rest>` and matched by prefix."""
    for cause, text in CAUSES.items():
        if legend_prefix:
            panel = panel.override_by_regexp(f"^{cause}( .*)?$", [_colour(text.colour)])
        else:
            panel = panel.override_by_name(cause, [_colour(text.colour)])
    return panel


def thresholds(*steps: tuple[float | None, str]) -> gd.ThresholdsConfig:
    return (
        gd.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=colour) for value, colour in steps])
    )


# -- panels -----------------------------------------------------------------------------------


def timeseries(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[gp.Dataquery],
    *,
    stacked: bool = False,
    links: Iterable[gd.DashboardLink] = (),
    lines: Sequence[tuple[float | None, str]] = (),
    width: int = 12,
    height: int = 8,
) -> gts.Panel:
    """A time series panel with a table legend (mean, max) and a sorted shared tooltip;
    `lines` are threshold steps (from value, colour) drawn as lines."""
    panel = (
        gts.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .targets(_targets(targets))
        .min(0)
        .fill_opacity(60 if stacked else 10)
        .legend(
            gc.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .calcs(["mean", "max"])
        )
        .tooltip(
            gc.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
        .span(width)
        .height(height)
    )
    if stacked:
        panel = panel.stacking(gc.StackingConfig().mode(cm.StackingMode.NORMAL))
    if lines:
        panel = panel.thresholds(thresholds(*lines)).thresholds_style(
            gc.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE)
        )
    link_list: list[cogbuilder.Builder[dm.DashboardLink]] = list(links)
    if link_list:
        panel = panel.data_links(link_list)
    return panel


def heatmap(
    title: str,
    description: str,
    unit: str,
    target: gp.Dataquery,
    *,
    width: int = 12,
    height: int = 8,
) -> gh.Panel:
    """A heatmap of a Prometheus histogram's buckets, as Prometheus counted them."""
    return (
        gh.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .targets(_targets([target]))
        .calculate(False)
        .y_axis(gh.YAxisConfig().unit(unit))
        .color(
            gh.HeatmapColorOptions()
            .mode(hm.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(hm.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .cell_gap(1)
        .exemplars_color("rgba(31, 96, 196, 0.9)")
        .span(width)
        .height(height)
    )


def table(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[gp.Dataquery],
    *,
    links: Iterable[gd.DashboardLink] = (),
    hidden: Sequence[str] = ("Time",),
    width: int = 12,
    height: int = 8,
) -> gt.Panel:
    """A table of instant query results, one row per series; `hidden` columns left out."""
    panel = (
        gt.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .targets(_targets(targets))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": dict.fromkeys(hidden, True)},
            )
        )
        .span(width)
        .height(height)
    )
    link_list: list[cogbuilder.Builder[dm.DashboardLink]] = list(links)
    if link_list:
        panel = panel.data_links(link_list)
    return panel


def state_timeline(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[gp.Dataquery],
    *,
    mappings: dict[str, tuple[str, str]],
    width: int = 12,
    height: int = 8,
) -> gst.Panel:
    """A state timeline whose values are named and coloured by `mappings` (value: text, colour)."""
    return (
        gst.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .targets(_targets(targets))
        .mappings(
            [
                dm.ValueMap(
                    options={
                        value: dm.ValueMappingResult(text=text, color=colour, index=i)
                        for i, (value, (text, colour)) in enumerate(mappings.items())
                    }
                )
            ]
        )
        .span(width)
        .height(height)
    )


def row(title: str) -> gd.Row:
    return gd.Row(title)


# -- annotations ------------------------------------------------------------------------------


class PrometheusAnnotation(dm.AnnotationQuery):
    """A Prometheus annotation query with the fields the SDK's model leaves out.

    Grafana's Prometheus data source reads `titleFormat`, `textFormat`, `tagKeys`, `step` and
    `useValueForTime` beside `expr`; with `useValueForTime` each series' value (ms since the
    epoch) is the event's time, which is how a timestamp gauge becomes one mark per deploy.
    """

    def __init__(
        self,
        name: str,
        expr: str,
        *,
        colour: str,
        title_format: str,
        text_format: str = "",
        tag_keys: str = "",
        use_value_for_time: bool = False,
    ) -> None:
        super().__init__(
            name=name, datasource=DATASOURCE, enable=True, icon_color=colour, expr=expr
        )
        self.title_format = title_format
        self.text_format = text_format
        self.tag_keys = tag_keys
        self.use_value_for_time = use_value_for_time

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(
            titleFormat=self.title_format,
            textFormat=self.text_format,
            tagKeys=self.tag_keys,
            useValueForTime=self.use_value_for_time,
            step="$__interval",
        )
        return payload


class Annotation(cogbuilder.Builder[dm.AnnotationQuery]):
    """Hands a ready annotation model to the dashboard builder."""

    def __init__(self, model: dm.AnnotationQuery) -> None:
        self._model = model

    def build(self) -> dm.AnnotationQuery:
        return self._model


def deploy_annotations(board: gd.Dashboard) -> gd.Dashboard:
    """Each service's deploys, at the deploy's event time, and the regressions found."""
    deploys = (
        f"max by (service, version) (precondition_deploy_info{{{SERVICE}}} == 1)"
        f" * on (service) group_left max by (service) "
        f"(precondition_deploy_timestamp_seconds{{{SERVICE}}}) * 1000"
    )
    regressions = f"max by (service, version) (precondition_deploy_regression{{{SERVICE}}}) == 1"
    return board.annotation(
        Annotation(
            PrometheusAnnotation(
                "Deploys",
                deploys,
                colour="#1F60C4",
                title_format="{{service}} deployed {{version}}",
                text_format="Deploy time as the collector saw it in event time.",
                tag_keys="service,version",
                use_value_for_time=True,
            )
        )
    ).annotation(
        Annotation(
            PrometheusAnnotation(
                "Regressions",
                regressions,
                colour="#E24D42",
                title_format="{{service}} {{version}} regressed",
                text_format="The deploy's failure ratio is significantly above its baseline.",
                tag_keys="service,version",
            )
        )
    )


# -- finishing --------------------------------------------------------------------------------


def finish(board: gd.Dashboard) -> dm.Dashboard:
    """Build the dashboard and number its panels (ids must be unique; rows count too)."""
    model = board.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return model
