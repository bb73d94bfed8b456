"""Which surfaces of a finished run `bench` measures, and on what: config only (no torch),
so that the bench rule can name its surfaces when Snakemake reads the workflow."""
from vitlandscape import methods, paths


def surfaces_of(models: dict) -> list[str]:
    """Every surface of the config's models, as MODEL/OBJECTIVE."""
    return [f"{name}/{objective}" for name, m in models.items() for objective in methods.objectives(m)]


def default_surfaces(models: dict) -> list[str]:
    """The first pretext loss and the first supervised ViT's loss, else the first other
    classification loss (mae/pretext and sup/supervised in the embedded default)."""
    surfaces = surfaces_of(models)
    pretext = [s for s in surfaces if s.endswith("/pretext")]
    labelled = sorted((s for s in surfaces if not s.endswith("/pretext")), key=lambda s: not s.endswith("/supervised"))
    return pretext[:1] + labelled[:1]


def cases(config: dict, surfaces: list[str] | None = None, data: str | None = None) -> list[dict]:
    """One bench case per surface (default: `default_surfaces`); a surface the config does not
    have is a ValueError naming the ones it has."""
    models = config["models"]
    known = surfaces_of(models)
    data = data or paths.data_file(config["data"]["dataset"])
    found = []
    for surface in surfaces or default_surfaces(models):
        if surface not in known:
            raise ValueError(f"has no surface {surface}; it has {', '.join(known)}")
        name, objective = surface.split("/")
        found.append({"surface": surface, "model": models[name], "objective": objective, "data": data,
                      "checkpoint": paths.objective_checkpoint(name, models[name], objective),
                      "landscape": config["landscape"]})
    return found
