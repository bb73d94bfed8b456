# Training trajectories: a training stage replayed with snapshots, the PCA plane of its path,
# the landscape on that plane (one job per tile, as for random directions), figures and the
# convergence table. The replay leaves the stage's own checkpoint alone, so a new snapshot
# schedule reruns only what follows from the snapshots.


rule trajectory:
    input:
        unpack(trajectory_inputs),
        data=DATA_FILE,
    output:
        snapshots="results/trajectories/{model}/{stage}/snapshots.safetensors",
        curve="results/trajectories/{model}/{stage}/curve.csv",
    wildcard_constraints:
        stage="pretrain|probe|finetune",
    params:
        settings=lambda w: stage_settings(w.model, w.stage),
        schedule=as_json(TRAJECTORIES["snapshots"]),
        pretrained=lambda w, input: f"--pretrained {input.pretrained}" if "pretrained" in input.keys() else "",
        device=config["device"],
        code=code_hash("train"),
    log:
        "results/logs/trajectory/{model}/{stage}.log",
    benchmark:
        "results/benchmarks/trajectory/{model}/{stage}.tsv"
    # the longest jobs start first, so that short ones fill the cores around them
    priority: 10
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        gpu=TRAIN_GPU,
        workers=WORKERS,
    conda:
        ENV
    shell:
        "vitlandscape trajectory --stage {wildcards.stage} --settings {params.settings:q}"
        " --schedule {params.schedule:q} --data {input.data} --checkpoint {input.checkpoint} {params.pretrained}"
        " --snapshots {output.snapshots} --curve {output.curve} --threads {threads} --device {params.device}"
        " --workers {resources.workers} > {log} 2>&1"


rule trajectory_plane:
    input:
        checkpoint=lambda w: trajectory_checkpoint(w.model, w.stage),
        snapshots="results/trajectories/{model}/{stage}/snapshots.safetensors",
    output:
        directions="results/trajectories/{model}/{stage}/directions.safetensors",
        summary="results/trajectories/{model}/{stage}/pca.json",
    params:
        settings=trajectory_settings,
        code=code_hash("landscape"),
    log:
        "results/logs/trajectory_plane/{model}/{stage}.log",
    benchmark:
        "results/benchmarks/trajectory_plane/{model}/{stage}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape trajectory-plane --settings {params.settings:q} --checkpoint {input.checkpoint}"
        " --snapshots {input.snapshots} --out {output.directions} --summary {output.summary} > {log} 2>&1"


rule trajectory_tile:
    input:
        data=DATA_FILE,
        checkpoint=lambda w: trajectory_checkpoint(w.model, w.stage),
        directions="results/trajectories/{model}/{stage}/directions.safetensors",
    output:
        "results/trajectories/{model}/{stage}/tiles/{tile}.nc",
    params:
        settings=trajectory_settings,
        code=code_hash("landscape"),
    log:
        "results/logs/trajectory_tile/{model}/{stage}/{tile}.log",
    benchmark:
        "results/benchmarks/trajectory_tile/{model}/{stage}/{tile}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=12 * 60,
        gpu=LANDSCAPE_GPU,
    group:
        "tiles"
    conda:
        ENV
    shell:
        "vitlandscape surface-tile --settings {params.settings:q} --data {input.data} --checkpoint {input.checkpoint}"
        " --directions {input.directions} --tile {wildcards.tile} --out {output} --threads {threads} > {log} 2>&1"


rule trajectory_assemble:
    input:
        checkpoint=lambda w: trajectory_checkpoint(w.model, w.stage),
        directions="results/trajectories/{model}/{stage}/directions.safetensors",
        tiles=expand("results/trajectories/{{model}}/{{stage}}/tiles/{tile}.nc", tile=TRAJECTORY_TILES),
    output:
        directory("results/trajectories/{model}/{stage}/surface.zarr"),
    params:
        settings=trajectory_settings,
        code=code_hash("landscape"),
    log:
        "results/logs/trajectory_assemble/{model}/{stage}.log",
    benchmark:
        "results/benchmarks/trajectory_assemble/{model}/{stage}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape assemble --settings {params.settings:q} --checkpoint {input.checkpoint}"
        " --directions {input.directions} --tiles {input.tiles} --out {output} > {log} 2>&1"


rule trajectory_figures:
    """The path on its plane, the loss curve and the distances: of one model, or of a
    `trajectories.compare` group side by side (`{group}` = the models joined by `_vs_`)."""
    input:
        unpack(trajectory_figure_inputs),
    output:
        report(
            expand("results/figures/trajectories/{{group}}/{{stage}}_{kind}.{fmt}", kind=["path", "curves",
                   "distances"], fmt=FORMATS),
            caption="../report/trajectory.rst",
            category="Trajectories",
        ),
    params:
        settings=figure_settings(),
        labels=lambda w: trajectory_group(w.group),
        prefix=lambda w: f"results/figures/trajectories/{w.group}/{w.stage}",
        title=lambda w: f"{' vs '.join(trajectory_group(w.group))}: {w.stage} trajectory",
        code=code_hash("figures"),
    log:
        "results/logs/trajectory_figures/{group}/{stage}.log",
    benchmark:
        "results/benchmarks/trajectory_figures/{group}/{stage}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "vitlandscape plot-trajectory --settings {params.settings:q} --surfaces {input.surfaces}"
        " --summaries {input.summaries} --curves {input.curves} --labels {params.labels}"
        " --title {params.title:q} --prefix {params.prefix} > {log} 2>&1"


rule snapshot_probe:
    input:
        data=DATA_FILE,
        snapshots="results/trajectories/{model}/pretrain/snapshots.safetensors",
    output:
        "results/trajectories/{model}/pretrain/probe_accuracy.json",
    params:
        settings=lambda w: stage_settings(w.model, "probe"),
        snapshots=TRAJECTORIES["probe_snapshots"],
        device=config["device"],
        code=code_hash("train"),
    log:
        "results/logs/snapshot_probe/{model}.log",
    benchmark:
        "results/benchmarks/snapshot_probe/{model}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        gpu=TRAIN_GPU,
        workers=WORKERS,
    conda:
        ENV
    shell:
        "vitlandscape snapshot-probe --settings {params.settings:q} --data {input.data} --snapshots {input.snapshots}"
        " --count {params.snapshots} --out {output} --threads {threads} --device {params.device}"
        " --workers {resources.workers} > {log} 2>&1"


rule convergence_table:
    input:
        curves=[f"results/trajectories/{m}/{s}/curve.csv" for m, s in TRAJECTORY_RUNS],
        probes=[f"results/trajectories/{m}/{s}/probe_accuracy.json" for m, s in probed_trajectories()],
    output:
        report("results/metrics/convergence.csv", caption="../report/convergence.rst", category="Trajectories"),
    params:
        settings=as_json({"fractions": TRAJECTORIES["convergence_fractions"],
                          "methods": {f"{m}/{s}": MODELS[m]["method"] for m, s in TRAJECTORY_RUNS}}),
        curves=[f"{m}/{s}=results/trajectories/{m}/{s}/curve.csv" for m, s in TRAJECTORY_RUNS],
        probes=[f"{m}/{s}=results/trajectories/{m}/{s}/probe_accuracy.json" for m, s in probed_trajectories()],
        code=code_hash("convergence"),
    log:
        "results/logs/convergence_table.log",
    benchmark:
        "results/benchmarks/convergence_table.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "vitlandscape convergence --settings {params.settings:q} --curves {params.curves} --probes {params.probes}"
        " --out {output} > {log} 2>&1"
