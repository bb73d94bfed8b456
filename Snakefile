# vitlandscape: MAE / RC-MAE / supervised ViTs and their loss landscapes.
# Run: snakemake --cores N   (config/config.yaml is the embedded default)
import sys

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless config files are given with --configfile: those replace
# it rather than being merged into it (a paper config must not inherit the demo models).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


# The schema, one readable line per problem (key path, value, what is allowed); defaults filled.
sys.path.insert(0, f"{workflow.basedir}/workflow")
from vitlandscape.configcheck import validate_config  # noqa: E402

validate_config(config, f"{workflow.basedir}/config/schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/landscape.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/trajectories.smk"
include: "workflow/rules/studies.smk"
include: "workflow/rules/bench.smk"


# On a cluster (snakemake --profile slurm) these small rules run on the submitting host,
# not as jobs of their own; locally the directive changes nothing.
localrules:
    all,
    assemble,
    accuracy_table,
    metrics_tables,
    effective_config,
    surface_figures,
    accuracy_figure,
    line_figure,
    interpolation_figure,
    compare_figures,
    spectrum_figure,
    ratio_map_figure,
    trajectory_assemble,
    trajectory_figures,
    convergence_table,
    variant_metrics,
    study_tables,
    study_measures_figure,
    study_contours_figure,


rule all:
    input:
        all_targets(),
    default_target: True


onsuccess:
    stop_warm_server()
    print(finished_message())


onerror:
    stop_warm_server()
