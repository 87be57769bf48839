"""Parameter counts and multiply-adds of the model zoo beside the published numbers.

    python -m launch.model_table                      # every model, at its own resolution
    python -m launch.model_table --models=resnet50,xception --resolution=128

Prints a markdown table. Parameters come from `jax.eval_shape` of `init` (nothing is
materialised); "GMACs (XLA)" from XLA's cost analysis of the compiled inference pass
at batch 1 (flops / 2); "GMACs (layers)" counts conv and dense multiply-adds the way
published tables do. XLA leaves out the multiply-adds over convolution padding but adds
the element-wise work, so its figure is 0.5-7% below the layer count for most nets and
slightly above it for Xception; see `lib/imagenet/nets/registry.py`. A footnote names
each reference. Compiling every model takes about a minute on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from experiments import common
from lib.core.errors import UserError
from lib.imagenet.nets import registry

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "Comma-separated model names (default: all registered).")
flags.DEFINE_integer(
    "resolution", None, "Square input size for the multiply-adds (default: each model's own)."
)
flags.DEFINE_boolean("xla", True, "Compile each model for XLA's cost analysis (slower).")


def table_row(name: str, resolution: int | None = None, xla: bool = True) -> dict:
    """One model's counts and references; `resolution` only affects the multiply-adds."""
    model = registry.get_model(name)
    variables = registry.variable_shapes(model, registry.RESOLUTION[name])
    params = registry.count_variables(variables, registry.COUNTED_COLLECTIONS[name])
    size = resolution or registry.RESOLUTION[name]
    published_size = size == registry.RESOLUTION[name]
    return {
        "model": name,
        "resolution": size,
        "params": params,
        "reference_params": registry.REFERENCE_PARAMS[name],
        "gmacs_xla": registry.forward_macs(model, variables, size) / 1e9 if xla else None,
        "gmacs_layers": registry.layer_macs(model, variables, size) / 1e9,
        "reference_gmacs": registry.REFERENCE_GMACS[name] if published_size else None,
    }


def format_header() -> str:
    return (
        "| model | input | params | reference params | match | GMACs (XLA) "
        "| GMACs (layers) | reference GMACs |\n"
        "|---|---:|---:|---:|:---:|---:|---:|---:|"
    )


def format_row(row: dict) -> str:
    def gmacs(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    match = "✓" if row["params"] == row["reference_params"] else "✗"
    return (
        f"| {row['model']} | {row['resolution']} | {row['params']:,} "
        f"| {row['reference_params']:,} | {match} | {gmacs(row['gmacs_xla'])} "
        f"| {gmacs(row['gmacs_layers'])} | {gmacs(row['reference_gmacs'])} |"
    )


def footnote(names: Sequence[str]) -> str:
    """Where the reference numbers of `names` come from (registry.REFERENCE_SOURCE), the
    models that share a source on one line."""
    by_source: dict[str, list[str]] = {}
    for name in names:
        by_source.setdefault(registry.REFERENCE_SOURCE[name], []).append(name)
    return "references:\n" + "\n".join(
        f"- {', '.join(models)}: {source}" for source, models in by_source.items()
    )


def main() -> None:
    names = FLAGS.models or list(registry.MODELS)
    for name in names:
        registry.check_name(name)
        if FLAGS.resolution is not None and FLAGS.resolution < registry.MIN_RESOLUTION[name]:
            raise UserError(
                f"--resolution={FLAGS.resolution} is too small for {name}; "
                f"it needs at least {registry.MIN_RESOLUTION[name]}"
            )
    print(format_header(), flush=True)
    for name in names:
        print(format_row(table_row(name, FLAGS.resolution, FLAGS.xla)), flush=True)
    print("\n" + footnote(names))


if __name__ == "__main__":
    common.run_command(main)
