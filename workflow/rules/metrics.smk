# Metrics: the Hessian at the trained weights and the flatness under Gaussian perturbation
# (one job each per surface), an optional map of |lambda_min / lambda_max| over a coarse grid,
# then every surface's metrics file, the summary table and the findings table.


rule hessian:
    input:
        data=eval_data,
        checkpoint=objective_checkpoint,
    output:
        "results/metrics/{model}/{objective}/hessian.json",
    params:
        settings=lambda w: metric_settings(w, "hessian", _EVAL_KEYS),
        code=code_hash("metrics"),
    log:
        "results/logs/hessian/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/hessian/{model}/{objective}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=12 * 60,
        gpu=LANDSCAPE_GPU,
    conda:
        ENV
    shell:
        "vitlandscape hessian --settings {params.settings:q} --data {input.data} --checkpoint {input.checkpoint}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule flatness:
    input:
        data=eval_data,
        checkpoint=objective_checkpoint,
    output:
        "results/metrics/{model}/{objective}/flatness.json",
    params:
        settings=lambda w: metric_settings(w, "flatness", _EVAL_KEYS + _PERTURBATION_KEYS),
        code=code_hash("metrics"),
    log:
        "results/logs/flatness/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/flatness/{model}/{objective}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=12 * 60,
        gpu=LANDSCAPE_GPU,
    conda:
        ENV
    shell:
        "vitlandscape flatness --settings {params.settings:q} --data {input.data} --checkpoint {input.checkpoint}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule ratio_map:
    """|lambda_min / lambda_max| at the points of a coarse grid in the surface's plane."""
    input:
        data=eval_data,
        checkpoint=objective_checkpoint,
        directions="results/directions/{model}/{objective}.safetensors",
    output:
        "results/metrics/{model}/{objective}/ratio_map.nc",
    params:
        settings=lambda w: metric_settings(w, "ratio_map", _EVAL_KEYS, with_hessian=True),
        code=code_hash("metrics"),
    log:
        "results/logs/ratio_map/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/ratio_map/{model}/{objective}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=LANDSCAPE_GPU,
    conda:
        ENV
    shell:
        "vitlandscape ratio-map --settings {params.settings:q} --data {input.data} --checkpoint {input.checkpoint}"
        " --directions {input.directions} --out {output} --threads {threads} > {log} 2>&1"


rule metrics_tables:
    input:
        surfaces=surface_targets(),
        hessian=metric_files("hessian"),
        flatness=metric_files("flatness"),
    output:
        surfaces=[f"results/metrics/{name}/{objective}.json" for name, objective in SURFACES],
        summary=report("results/metrics/summary.csv", caption="../report/summary_table.rst", category="Metrics"),
        findings=report("results/metrics/findings.csv", caption="../report/findings_table.rst", category="Metrics"),
    params:
        settings=table_settings(),
        out_dir=lambda w, output: Path(output.summary).parent,
        code=code_hash("metrics_tables"),
    log:
        "results/logs/metrics_tables.log",
    benchmark:
        "results/benchmarks/metrics_tables.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "vitlandscape metrics-tables --settings {params.settings:q} --surfaces {input.surfaces}"
        " --hessian {input.hessian} --flatness {input.flatness} --out-dir {params.out_dir} > {log} 2>&1"
