# Speed of the grid engine against its forward ceiling, loss-landscapes and a Li et al. loop,
# on one grid of a finished run's first pretext and first supervised surface. Not part of
# `all`: ask for it (`snakemake --cores 2 bench`; `--set-threads bench=2` for 2 torch threads).
from vitlandscape.landscape.bench_cases import default_surfaces  # noqa: E402

BENCH_SURFACES = default_surfaces(MODELS)


rule bench:
    input:
        config="results/config.yaml",
        data=DATA_FILE,
        checkpoints=[objective_checkpoint_path(*surface.split("/")) for surface in BENCH_SURFACES],
    output:
        "results/bench/bench.json",
    params:
        surfaces=BENCH_SURFACES,
        grid=11,
        device=LANDSCAPE["device"],
        code=code_hash("bench"),
    log:
        "results/logs/bench.log",
    benchmark:
        "results/benchmarks/bench.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=LANDSCAPE_GPU,
    conda:
        ENV
    shell:
        "vitlandscape bench --config {input.config} --data {input.data} --surfaces {params.surfaces}"
        " --grid {params.grid} --device {params.device} --threads {threads} --out {output} > {log} 2>&1"
