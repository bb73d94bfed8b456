"""Which rules run each stage's code, and which stages use each library module: the project's
promise, written down here independently of the import graph from which
vitlandscape/codehash.py derives the code hashes. tests/test_code_hash.py checks every module's
code hashes against it in seconds; tests/test_workflow_e2e.py checks, for one module of each
kind, that Snakemake reruns exactly those rules."""

FIGURE_RULES = {"surface_figures", "accuracy_figure", "compare_figures", "line_figure", "interpolation_figure",
                "spectrum_figure", "trajectory_figures"}

STAGE_RULES = {"prepare_data": {"prepare_data"}, "train": {"pretrain", "downstream", "trajectory"},
               "table": {"accuracy_table"},
               "landscape": {"directions", "surface_tile", "assemble", "line", "interpolate", "trajectory_plane",
                             "trajectory_tile", "trajectory_assemble"},
               "figures": FIGURE_RULES, "metrics": {"hessian", "flatness"}, "metrics_tables": {"metrics_tables"},
               "convergence": {"convergence_table"}, "reconstructions": {"reconstructions_figure"}}
EVERY_STAGE = set(STAGE_RULES)
MODEL_STAGES = {"train", "landscape", "metrics", "reconstructions"}
DATA_STAGES = MODEL_STAGES | {"prepare_data"}
MODULE_STAGES = {
    "__init__.py": EVERY_STAGE, "progress.py": DATA_STAGES, "devices.py": MODEL_STAGES,
    # the test hooks (inert unless the tests set their variables) run inside training and tiles
    "faults.py": {"train", "landscape"},
    "data/__init__.py": DATA_STAGES, "data/common.py": DATA_STAGES, "data/prepare.py": DATA_STAGES,
    "data/imagefolder.py": DATA_STAGES, "data/files.py": DATA_STAGES,
    "storage/__init__.py": DATA_STAGES | {"table", "metrics_tables", "convergence"},
    "storage/outputs.py": DATA_STAGES | {"table", "metrics_tables", "convergence"},
    "storage/checkpoints.py": DATA_STAGES | {"table"}, "storage/formats.py": MODEL_STAGES,
    "storage/snapshots.py": {"train", "landscape"},
    "models/__init__.py": MODEL_STAGES, "models/arch.py": MODEL_STAGES, "models/mae.py": MODEL_STAGES,
    "models/classifier.py": MODEL_STAGES, "models/posembed.py": MODEL_STAGES, "models/masking.py": MODEL_STAGES,
    # the contrastive objective's fixed views are made by MoCo v3's augmentation, and with its ops
    **dict.fromkeys(("augment/__init__.py", "augment/common.py", "augment/crop.py", "augment/randaugment.py",
                     "augment/twoview.py"), MODEL_STAGES),
    "augment/erasing.py": {"train"}, "augment/batch.py": {"train"},
    "train/__init__.py": {"train"}, "train/stages.py": {"train"}, "train/loops.py": {"train"},
    "train/rcmae.py": {"train"}, "train/recording.py": {"train"}, "train/recipes.py": {"train"},
    "train/optim.py": {"train"}, "train/mocov3.py": {"train"},
    "models/mocov3.py": MODEL_STAGES, "landscape/contrastive.py": MODEL_STAGES,
    "landscape/__init__.py": MODEL_STAGES, "landscape/objectives.py": MODEL_STAGES,
    "landscape/stages.py": {"landscape"}, "landscape/tiles.py": {"landscape"},
    "landscape/trajectory_plane.py": {"landscape"},
    "landscape/directions.py": {"landscape", "metrics", "reconstructions"},
    "landscape/grid.py": {"landscape", "metrics"},
    "landscape/surface.py": {"landscape", "metrics", "reconstructions"},
    "landscape/settings.py": {"landscape", "metrics", "reconstructions"},
    "metrics/__init__.py": {"table", "metrics", "metrics_tables", "convergence", "figures", "reconstructions"},
    "metrics/accuracy.py": {"table"}, "metrics/stages.py": {"metrics"}, "metrics/hessian.py": {"metrics"},
    "metrics/flatness.py": {"metrics"}, "metrics/tables.py": {"metrics_tables"},
    # figures mark the centre and draw basins as the metrics measure them
    "metrics/basins.py": {"metrics_tables", "figures", "reconstructions"}, "metrics/findings.py": {"metrics_tables"},
    "metrics/convergence.py": {"convergence"}, "metrics/curves.py": {"convergence", "figures", "reconstructions"},
    **dict.fromkeys(("figures/__init__.py", "figures/stages.py", "figures/surfaces.py", "figures/trajectories.py",
                     "figures/interactive.py"), {"figures", "reconstructions"}),
    "figures/reconstructions.py": {"reconstructions"},
    # argument parsing, the code hashes, config checks (with the checkpoint-header and schema-error
    # helpers), the cost planner (and its throughput measurement) and the benchmark compute no result
    "cli.py": set(), "__main__.py": set(), "codehash.py": set(), "configcheck.py": set(),
    "schemaerrors.py": set(), "plan.py": set(), "storage/checkpoint_header.py": set(),
    "landscape/throughput.py": set(), "landscape/bench.py": set(), "landscape/bench_cases.py": set(),
    # where results go (the rules read it when Snakemake parses them: outputs, not params) and
    # where the schema is, whose defaults the figures draw with
    "paths.py": {"figures", "reconstructions"},
    # how jobs start (forked from a warm server) changes no result
    "warmstart.py": set(),
    # the studies' variants (read as the rules parse) and their tables and figures: no study in the default
    "studies.py": set(),
    # what each method has (its objectives, its weights' names) is read by the stages that build models,
    # and by the figures that name them
    "methods.py": MODEL_STAGES | {"figures"}, "metrics/intervals.py": set(), "metrics/replicates.py": set(), "figures/studies.py": set(),
}


