# Studies (config `studies:`): their variants are models with the rules above; here the other
# evaluation subsets, each variant's metrics file, and each study's tables and figures.


rule prepare_eval_subset:
    """The prepared data with another evaluation subset of the same training split (a study's eval seed)."""
    output:
        "results/data/{dataset}.eval={eval_seed}.pt",
    wildcard_constraints:
        eval_seed=r"\d+",
    params:
        settings=lambda w: as_json({**DATA_SETTINGS, "eval_seed": int(w.eval_seed)}),
        code=code_hash("prepare_data"),
    log:
        "results/logs/prepare_data/{dataset}.eval={eval_seed}.log",
    benchmark:
        "results/benchmarks/prepare_data/{dataset}.eval={eval_seed}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape prepare-data --settings {params.settings:q} --out {output} > {log} 2>&1"


rule variant_metrics:
    """A variant's metrics file: its surface's measures with the Hessian and flatness of its
    weights on its evaluation set (shared by its variants on other directions)."""
    input:
        surface="results/surfaces/{variant}/{objective}.zarr",
        hessian=lambda w: variant_measured(w, "hessian"),
        flatness=lambda w: variant_measured(w, "flatness"),
    output:
        "results/metrics/{variant}/{objective}.json",
    params:
        settings=table_settings(),
        hessian=lambda w, input: f"--hessian {input.hessian}" if input.hessian else "",
        flatness=lambda w, input: f"--flatness {input.flatness}" if input.flatness else "",
        code=code_hash("metrics_tables"),
    log:
        "results/logs/variant_metrics/{variant}/{objective}.log",
    benchmark:
        "results/benchmarks/variant_metrics/{variant}/{objective}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "vitlandscape surface-metrics --settings {params.settings:q} --surface {input.surface} {params.hessian}"
        " {params.flatness} --out {output} > {log} 2>&1"


rule study_tables:
    input:
        study_metric_files,
    output:
        summary=report("results/studies/{study}/summary.csv", caption="../report/study_summary.rst",
                       category="Studies", subcategory="{study}"),
        findings=report("results/studies/{study}/findings.csv", caption="../report/study_findings.rst",
                        category="Studies", subcategory="{study}"),
    params:
        settings=study_settings,
        out_dir=lambda w, output: Path(output.summary).parent,
        code=code_hash("study_tables"),
    log:
        "results/logs/study_tables/{study}.log",
    benchmark:
        "results/benchmarks/study_tables/{study}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "vitlandscape study-tables --settings {params.settings:q} --metrics {input} --out-dir {params.out_dir}"
        " > {log} 2>&1"


rule study_measures_figure:
    """Each claim measure against the study's setting (per model for a seed study): every
    replicate, and the mean with its two-level bootstrap interval."""
    input:
        "results/studies/{study}/summary.csv",
    output:
        report(expand("results/studies/{{study}}/{{study}}_measures.{fmt}", fmt=FORMATS),
               caption="../report/study_measures.rst", category="Studies", subcategory="{study}"),
    params:
        settings=study_measures_settings,
        prefix=figure_prefix,
        code=code_hash("study_figures"),
    log:
        "results/logs/study_figures/{study}_measures.log",
    benchmark:
        "results/benchmarks/study_figures/{study}_measures.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "vitlandscape plot-study-measures --settings {params.settings:q} --summary {input} --prefix {params.prefix}"
        " > {log} 2>&1"


rule study_contours_figure:
    """The contours of a study's trainings (first direction pair and evaluation subset) on one colour scale."""
    input:
        lambda w: [f"results/surfaces/{v.name}/{w.objective}.zarr" for v in study_contour_variants(w.study, w.objective)],
    output:
        report(expand("results/studies/{{study}}/{{study}}_contours_{{objective}}.{fmt}", fmt=FORMATS),
               caption="../report/study_contours.rst", category="Studies", subcategory="{study}"),
    params:
        settings=lambda w: as_json({"figures": json.loads(figure_settings()), "study": {"name": w.study}}),
        labels=lambda w: [v.trained_as for v in study_contour_variants(w.study, w.objective)],
        prefix=lambda w, output: str(output[0]).rsplit("_", 2)[0],
        code=code_hash("study_figures"),
    log:
        "results/logs/study_figures/{study}_contours_{objective}.log",
    benchmark:
        "results/benchmarks/study_figures/{study}_contours_{objective}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "vitlandscape plot-study-contours --settings {params.settings:q} --surfaces {input} --labels {params.labels}"
        " --prefix {params.prefix} > {log} 2>&1"
