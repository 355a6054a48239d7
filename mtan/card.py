"""Model cards: what an MTAN model predicts, how to load it, how it was trained, its metrics (the
Hub's ``model-index`` metadata included)."""
from __future__ import annotations

METRIC_NAMES = {
    "semantic.miou": ("mIoU", "mean_iou"),
    "semantic.pixel_acc": ("Pixel accuracy", "pixel_accuracy"),
    "depth.abs_err": ("Depth absolute error", "abs_err"),
    "depth.rel_err": ("Depth relative error", "rel_err"),
    "normal.mean_deg": ("Normal mean angle error (deg)", "mean_angle_error"),
    "normal.median_deg": ("Normal median angle error (deg)", "median_angle_error"),
}


def _number(key: str, value) -> str:
    """A card cell: counts as integers, everything else with 4 decimals."""
    if value is None or value != value:
        return "-"
    return f"{int(value)}" if ".images" in key else f"{value:.4f}"


def model_card(model, *, training_command: str | None = None, data: str | None = None,
               dataset_name: str | None = None, dataset_type: str | None = None,
               results: dict[str, float] | None = None, notes: str | None = None, repo_id: str | None = None,
               evaluations: list[dict] | None = None, sections: list[tuple[str, str]] | None = None,
               summary: str | None = None):
    """A model card for an MTAN model: what it predicts, how to load it, how it was trained, its metrics.

    ``results`` (keys like ``semantic.miou``) on ``dataset_name`` also go into the Hub's
    ``model-index`` metadata; ``evaluations`` gives several datasets at once, as dicts with
    ``name``, ``type`` and ``results`` (the Results section gets one column per dataset).
    ``sections``: extra ``(title, markdown)`` sections placed before the notes; ``summary``: a
    paragraph under the title.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    name = repo_id or "mtan-model"
    if evaluations is None and results and dataset_name:
        evaluations = [{"name": dataset_name, "type": dataset_type or dataset_name.lower(), "results": results}]
    eval_results = []
    for ev in evaluations or []:
        for key, value in ev["results"].items():
            if key in METRIC_NAMES and value == value:  # skip NaN
                pretty, metric_type = METRIC_NAMES[key]
                eval_results.append(EvalResult(
                    task_type="image-segmentation" if key.startswith("semantic") else "depth-estimation",
                    dataset_type=ev.get("type") or ev["name"].lower(), dataset_name=ev["name"],
                    metric_type=metric_type, metric_name=pretty, metric_value=round(float(value), 6)))
    card_data = ModelCardData(
        library_name="mtan", license="mit", pipeline_tag="image-segmentation",
        tags=["multi-task-learning", "semantic-segmentation", "depth-estimation", "mtan", "pytorch",
              "model_hub_mixin", "pytorch_model_hub_mixin"],
        model_name=name if eval_results else None, eval_results=eval_results or None,
    )
    lines = [f"# {name}", "",
             f"A Multi-Task Attention Network (MTAN, Liu et al., CVPR 2019, [arXiv 1803.10704]"
             f"(https://arxiv.org/abs/1803.10704)): one network predicting "
             f"{', '.join(t.name for t in model.tasks)} from a single image.", "",
             *([summary, ""] if summary else []),
             "| field | value |", "|---|---|",
             f"| architecture | `{model.arch}` (SegNet backbone, width x{model.width:g}: {model.widths}) |",
             f"| parameters | {sum(p.numel() for p in model.parameters()):,} |"]
    lines += [f"| {t.name} | {t.describe()} |" for t in model.tasks]
    lines += ["", "## Use", "", "```python", "from mtan import MTAN", "",
              f"model = MTAN.from_pretrained(\"{repo_id or 'path/to/this/folder'}\")",
              "outputs = model.predict(image)  # image: 3 x H x W float tensor in [0, 1], any size",
              "```", ""]
    if data or training_command:
        lines += ["## Training", ""]
        if data:
            lines += [f"Data: {data}", ""]
        if training_command:
            lines += ["```bash", training_command, "```", ""]
    if evaluations and len(evaluations) > 1:
        keys = list(dict.fromkeys(k for ev in evaluations for k in ev["results"]))
        lines += ["## Results", "", "| metric | " + " | ".join(ev["name"] for ev in evaluations) + " |",
                  "|---|" + "---|" * len(evaluations)]
        for k in keys:
            cells = [ev["results"].get(k) for ev in evaluations]
            lines.append(f"| {k} | " + " | ".join("-" if c is None or c != c else _number(k, c) for c in cells) + " |")
        lines.append("")
    elif results or evaluations:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_number(k, v)} |" for k, v in (results or evaluations[0]["results"]).items()]
        lines.append("")
    for title, text in sections or []:
        lines += [f"## {title}", "", text.strip(), ""]
    if notes:
        lines += ["## Notes", "", notes, ""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)
