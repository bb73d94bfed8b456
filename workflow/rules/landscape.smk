# Loss landscapes: directions, one job per grid tile, assembly into Zarr, 1-D paths.


rule directions:
    input:
        checkpoint=objective_checkpoint,
    output:
        "results/directions/{model}/{objective}.safetensors",
    params:
        settings=direction_settings,
        code=code_hash("landscape"),
    log:
        "results/logs/directions/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/directions/{model}/{objective}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape directions --settings {params.settings:q} --checkpoint {input.checkpoint} --out {output}"
        " > {log} 2>&1"


rule surface_tile:
    input:
        data=eval_data,
        checkpoint=objective_checkpoint,
        directions="results/directions/{model}/{objective}.safetensors",
    output:
        "results/surfaces/{model}/{objective}/tiles/{tile}.nc",
    params:
        settings=surface_settings,
        code=code_hash("landscape"),
    log:
        "results/logs/surface_tile/{model}/{objective}/{tile}.log",
    benchmark:
        "results/benchmarks/surface_tile/{model}/{objective}/{tile}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=12 * 60,
        gpu=LANDSCAPE_GPU,
    # On a cluster, `--group-components tiles=N` packs N tiles into one job (ignored locally).
    group:
        "tiles"
    conda:
        ENV
    shell:
        "vitlandscape surface-tile --settings {params.settings:q} --data {input.data} --checkpoint {input.checkpoint}"
        " --directions {input.directions} --tile {wildcards.tile} --out {output}"
        " --threads {threads} > {log} 2>&1"


rule assemble:
    input:
        checkpoint=objective_checkpoint,
        directions="results/directions/{model}/{objective}.safetensors",
        tiles=expand("results/surfaces/{{model}}/{{objective}}/tiles/{tile}.nc", tile=TILES),
    output:
        directory("results/surfaces/{model}/{objective}.zarr"),
    params:
        settings=surface_settings,
        code=code_hash("landscape"),
    log:
        "results/logs/assemble/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/assemble/{model}/{objective}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape assemble --settings {params.settings:q} --checkpoint {input.checkpoint}"
        " --directions {input.directions} --tiles {input.tiles} --out {output} > {log} 2>&1"


rule line:
    input:
        data=eval_data,
        checkpoint=objective_checkpoint,
        directions="results/directions/{model}/{objective}.safetensors",
    output:
        "results/lines/{model}/{objective}.nc",
    params:
        settings=line_settings,
        code=code_hash("landscape"),
    log:
        "results/logs/line/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/line/{model}/{objective}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=12 * 60,
        gpu=LANDSCAPE_GPU,
    conda:
        ENV
    shell:
        "vitlandscape line --settings {params.settings:q} --data {input.data} --checkpoint {input.checkpoint}"
        " --directions {input.directions} --out {output} --threads {threads} > {log} 2>&1"


rule interpolate:
    input:
        unpack(interpolation_checkpoints),
        data=DATA_FILE,
    output:
        "results/interpolations/{name}.nc",
    params:
        settings=interpolation_settings,
        code=code_hash("landscape"),
    log:
        "results/logs/interpolate/{name}.log",
    benchmark:
        "results/benchmarks/interpolate/{name}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=12 * 60,
        gpu=LANDSCAPE_GPU,
    conda:
        ENV
    shell:
        "vitlandscape interpolate --settings {params.settings:q} --data {input.data} --start {input.start}"
        " --end {input.end} --out {output} --threads {threads} > {log} 2>&1"
