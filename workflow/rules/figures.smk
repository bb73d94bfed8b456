# Figures: per-surface 3-D / contour / slices / accuracy, interactive HTML and VTS exports,
# comparison panels and basin overlays. Only these rules depend on the `figures` config.


rule surface_figures:
    input:
        "results/surfaces/{model}/{objective}.zarr",
    output:
        surface=report(
            expand("results/figures/{{model}}/{{objective}}_3d.{fmt}", fmt=FORMATS),
            caption="../report/surface_3d.rst",
            category="Landscapes",
            subcategory="{model}",
            labels={"model": "{model}", "objective": "{objective}", "figure": "3-D surface"},
        ),
        contour=report(
            expand("results/figures/{{model}}/{{objective}}_contour.{fmt}", fmt=FORMATS),
            caption="../report/surface_contour.rst",
            category="Landscapes",
            subcategory="{model}",
            labels={"model": "{model}", "objective": "{objective}", "figure": "contours"},
        ),
        slices=report(
            expand("results/figures/{{model}}/{{objective}}_slices.{fmt}", fmt=FORMATS),
            caption="../report/surface_slices.rst",
            category="Landscapes",
            subcategory="{model}",
            labels={"model": "{model}", "objective": "{objective}", "figure": "1-D slices"},
        ),
        html="results/figures/{model}/{objective}.html",
        vts="results/figures/{model}/{objective}.vts",
    params:
        settings=figure_settings(),
        prefix=figure_prefix,
        code=code_hash("figures"),
    log:
        "results/logs/surface_figures/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/surface_figures/{model}/{objective}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape plot-surface --settings {params.settings:q} --surface {input} --prefix {params.prefix}"
        " --html {output.html} --vts {output.vts} > {log} 2>&1"


rule accuracy_figure:
    """The accuracy landscape of classification objectives."""
    input:
        "results/surfaces/{model}/{objective}.zarr",
    output:
        report(
            expand("results/figures/{{model}}/{{objective}}_accuracy.{fmt}", fmt=FORMATS),
            caption="../report/accuracy.rst",
            category="Landscapes",
            subcategory="{model}",
            labels={"model": "{model}", "objective": "{objective}", "figure": "accuracy"},
        ),
    wildcard_constraints:
        objective="probe|finetune|supervised",
    params:
        settings=figure_settings(),
        prefix=figure_prefix,
        code=code_hash("figures"),
    log:
        "results/logs/accuracy_figure/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/accuracy_figure/{model}/{objective}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape plot-accuracy --settings {params.settings:q} --surface {input} --prefix {params.prefix}"
        " > {log} 2>&1"


rule line_figure:
    input:
        "results/lines/{model}/{objective}.nc",
    output:
        report(
            expand("results/figures/{{model}}/{{objective}}_line_path.{fmt}", fmt=FORMATS),
            caption="../report/line.rst",
            category="Landscapes",
            subcategory="{model}",
            labels={"model": "{model}", "objective": "{objective}", "figure": "1-D line"},
        ),
    params:
        settings=figure_settings(),
        prefix=figure_prefix,
        code=code_hash("figures"),
    log:
        "results/logs/line_figure/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/line_figure/{model}/{objective}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape plot-path --settings {params.settings:q} --path {input} --prefix {params.prefix} > {log} 2>&1"


rule reconstructions_figure:
    """MAE reconstructions along a pretext surface's x direction: it runs the model on the whole
    evaluation set at each point (as a line does), so it gets the landscape's device and threads."""
    input:
        data=eval_data,
        checkpoint=lambda w: objective_checkpoint_path(w.model, "pretext"),
        directions="results/directions/{model}/pretext.safetensors",
        surface="results/surfaces/{model}/pretext.zarr",
    output:
        report(
            expand("results/figures/{{model}}/pretext_reconstructions.{fmt}", fmt=FORMATS),
            caption="../report/reconstructions.rst",
            category="Landscapes",
            subcategory="{model}",
            labels={"model": "{model}", "objective": "pretext", "figure": "reconstructions"},
        ),
    params:
        settings=reconstruction_settings,
        prefix=figure_prefix,
        code=code_hash("reconstructions"),
    log:
        "results/logs/reconstructions_figure/{model}.log",
    benchmark:
        "results/benchmarks/reconstructions_figure/{model}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=LANDSCAPE_GPU,
    conda:
        ENV
    shell:
        "vitlandscape plot-reconstructions --settings {params.settings:q} --data {input.data}"
        " --checkpoint {input.checkpoint} --directions {input.directions} --surface {input.surface}"
        " --prefix {params.prefix} --threads {threads} > {log} 2>&1"


rule interpolation_figure:
    input:
        "results/interpolations/{name}.nc",
    output:
        report(
            expand("results/figures/interpolations/{{name}}_path.{fmt}", fmt=FORMATS),
            caption="../report/interpolation.rst",
            category="Interpolations",
            labels={"interpolation": "{name}"},
        ),
    params:
        settings=figure_settings(),
        prefix=figure_prefix,
        code=code_hash("figures"),
    log:
        "results/logs/interpolation_figure/{name}.log",
    benchmark:
        "results/benchmarks/interpolation_figure/{name}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape plot-path --settings {params.settings:q} --path {input} --prefix {params.prefix} > {log} 2>&1"


rule compare_figures:
    input:
        comparison_surfaces,
    output:
        compare=report(
            expand("results/figures/compare/{{name}}_compare.{fmt}", fmt=FORMATS),
            caption="../report/compare.rst",
            category="Comparisons",
            labels={"comparison": "{name}", "figure": "surfaces"},
        ),
        basins=report(
            expand("results/figures/compare/{{name}}_basins.{fmt}", fmt=FORMATS),
            caption="../report/basins.rst",
            category="Comparisons",
            labels={"comparison": "{name}", "figure": "basins"},
        ),
    params:
        settings=figure_settings(),
        labels=lambda w: COMPARISONS[w.name]["surfaces"],
        title=lambda w: COMPARISONS[w.name].get("title", w.name),
        prefix=figure_prefix,
        code=code_hash("figures"),
    log:
        "results/logs/compare_figures/{name}.log",
    benchmark:
        "results/benchmarks/compare_figures/{name}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape plot-compare --settings {params.settings:q} --surfaces {input} --labels {params.labels}"
        " --title {params.title:q} --prefix {params.prefix} > {log} 2>&1"


rule spectrum_figure:
    """The Hessian eigenvalue spectral density of every surface, one panel each."""
    input:
        metric_files("hessian"),
    output:
        report(
            expand("results/figures/metrics/hessian_spectrum.{fmt}", fmt=FORMATS),
            caption="../report/spectrum.rst",
            category="Metrics",
            labels={"figure": "Hessian spectral density"},
        ),
    params:
        settings=figure_settings(),
        labels=[f"{name}/{objective}" for name, objective in SURFACES],
        prefix=figure_prefix,
        code=code_hash("figures"),
    log:
        "results/logs/spectrum_figure.log",
    benchmark:
        "results/benchmarks/spectrum_figure.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape plot-spectrum --settings {params.settings:q} --hessian {input} --labels {params.labels}"
        " --prefix {params.prefix} > {log} 2>&1"


rule ratio_map_figure:
    input:
        "results/metrics/{model}/{objective}/ratio_map.nc",
    output:
        report(
            expand("results/figures/{{model}}/{{objective}}_ratio_map.{fmt}", fmt=FORMATS),
            caption="../report/ratio_map.rst",
            category="Metrics",
            labels={"model": "{model}", "objective": "{objective}", "figure": "|lambda_min / lambda_max|"},
        ),
    params:
        settings=figure_settings(),
        prefix=figure_prefix,
        code=code_hash("figures"),
    log:
        "results/logs/ratio_map_figure/{model}/{objective}.log",
    benchmark:
        "results/benchmarks/ratio_map_figure/{model}/{objective}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "vitlandscape plot-ratio-map --settings {params.settings:q} --ratio-map {input} --prefix {params.prefix}"
        " > {log} 2>&1"


rule effective_config:
    """The config as run, defaults filled in (for the report and for the record)."""
    output:
        report("results/config.yaml", caption="../report/config.rst", category="Configuration"),
    params:
        config=as_json(config),
    log:
        "results/logs/effective_config.log",
    benchmark:
        "results/benchmarks/effective_config.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        ENV
    shell:
        "vitlandscape write-config --settings {params.config:q} --out {output} > {log} 2>&1"
