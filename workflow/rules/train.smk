# Pretraining (MAE, RC-MAE, supervised ViT), linear probing and fine-tuning.


rule pretrain:
    input:
        data=DATA_FILE,
    output:
        "results/checkpoints/{model}/pretrain.pt",
    params:
        settings=lambda w: stage_settings(w.model, "pretrain"),
        device=config["device"],
        code=code_hash("train"),
    log:
        "results/logs/pretrain/{model}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}.tsv"
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
        "vitlandscape pretrain --settings {params.settings:q} --data {input.data} --out {output}"
        " --threads {threads} --device {params.device} --workers {resources.workers} > {log} 2>&1"


rule downstream:
    """Linear probe or fine-tuning of a pretrained MAE / RC-MAE encoder."""
    input:
        data=DATA_FILE,
        checkpoint=pretrained,
    output:
        checkpoint="results/checkpoints/{model}/{stage}.pt",
        metrics="results/checkpoints/{model}/{stage}.json",
    wildcard_constraints:
        stage="probe|finetune",
    params:
        settings=lambda w: stage_settings(w.model, w.stage),
        device=config["device"],
        code=code_hash("train"),
    log:
        "results/logs/{stage}/{model}.log",
    benchmark:
        "results/benchmarks/{stage}/{model}.tsv"
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
        "vitlandscape {wildcards.stage} --settings {params.settings:q} --data {input.data}"
        " --checkpoint {input.checkpoint} --out {output.checkpoint} --metrics {output.metrics}"
        " --threads {threads} --device {params.device} --workers {resources.workers} > {log} 2>&1"


rule evaluate_given:
    """Test accuracy of a probe, fine-tuned or supervised checkpoint given in the config."""
    input:
        data=DATA_FILE,
        checkpoint=given_checkpoint,
    output:
        "results/accuracy/{model}/{stage}.json",
    wildcard_constraints:
        stage="probe|finetune|supervised",
    params:
        settings=lambda w: stage_settings(w.model, "pretrain" if w.stage == "supervised" else w.stage),
        device=config["device"],
        code=code_hash("train"),
    log:
        "results/logs/evaluate/{model}/{stage}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{stage}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=2 * 60,
        gpu=TRAIN_GPU,
        workers=WORKERS,
    conda:
        ENV
    shell:
        "vitlandscape evaluate --stage {wildcards.stage} --settings {params.settings:q} --data {input.data}"
        " --checkpoint {input.checkpoint} --metrics {output} --threads {threads} --device {params.device}"
        " --workers {resources.workers} > {log} 2>&1"


rule accuracy_table:
    input:
        accuracy_inputs(),
    output:
        report("results/metrics/accuracy.csv", caption="../report/accuracy_table.rst", category="Accuracy"),
    params:
        metrics=accuracy_metrics(),
        supervised=[f"{n}=results/checkpoints/{n}/pretrain.pt" for n in trained_supervised()],
        code=code_hash("table"),
    log:
        "results/logs/accuracy_table.log",
    benchmark:
        "results/benchmarks/accuracy_table.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "vitlandscape accuracy-table --metrics {params.metrics} --supervised {params.supervised}"
        " --out {output} > {log} 2>&1"
