rule prepare_data:
    output:
        "results/data/{dataset}.pt",
    params:
        settings=as_json(DATA_SETTINGS),
        code=code_hash("prepare_data"),
    log:
        "results/logs/prepare_data/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_data/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape prepare-data --settings {params.settings:q} --out {output} > {log} 2>&1"
