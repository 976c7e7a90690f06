"""The demo page: upload a medical image, see what the model sees and what each domain's adapter says.

``medadapt demo SAVE_OR_HUB_ID`` (or :func:`build_demo` in Python, or the repository's ``app.py`` on a
Hugging Face Space) serves a Gradio page that shows, for one uploaded PNG/JPEG/DICOM/NIfTI image:

* the model's input (windowed, converted and resized as the model receives it; a window choice for
  DICOM and NIfTI);
* the domain that served it: the routed domain and its router distance (``domain="auto"``, when the
  save has a router) or the chosen one;
* every label's probability for that domain (``predict_proba``);
* for generative bases, the answer to a typed question (``generate``);
* the line that it is not for clinical use.

A file that is no image, or is above the size limit (:data:`.inputs.MAX_UPLOAD_BYTES`), gets a
message on the page. :class:`DemoService` holds the logic (tested without a browser); the Gradio
layer only wires it to components. Gradio is the optional ``[demo]`` extra.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import MedAdaptError, MissingExtraError
from ..images import model_input_image
from ..routing import ROUTER_KEY
from .inputs import ACCEPTED, DEFAULT_WINDOW, MAX_UPLOAD_BYTES, WINDOW_CHOICES, read_upload

if TYPE_CHECKING:  # pragma: no cover
    from ..model import ContinualVLM

AUTO = "auto"
NOT_FOR_CLINICAL_USE = (
    "**Not for clinical use.** A research demonstration of medadapt: its outputs are not a diagnosis "
    "and must not guide the care of a patient."
)


@dataclass
class Analysis:
    """What the page shows for one upload (``error`` set instead when it cannot be analysed)."""

    model_input: Image.Image | None = None
    domain: str = ""
    served: str = ""  # a sentence: which domain served it and how it was chosen
    probabilities: dict[str, float] | None = None
    answer: str = ""
    error: str = ""
    source: str = ""  # the uploaded file's name

    def probabilities_html(self) -> str:
        """An HTML table of every label's probability (``data-label`` / ``data-prob`` carry exact values)."""
        source = html.escape(self.source, quote=True)
        if self.error:
            return f'<div id="medadapt-error" class="error" data-source="{source}">{html.escape(self.error)}</div>'
        if not self.probabilities:
            return ""
        rows = "".join(
            f'<tr data-label="{html.escape(label, quote=True)}" data-prob="{p!r}"><td>{html.escape(label)}</td><td>{p:.4f}</td></tr>'
            for label, p in self.probabilities.items()
        )
        return (f'<table id="medadapt-probabilities" data-source="{source}" data-domain="{html.escape(self.domain, quote=True)}">'
                f"<tr><th>label</th><th>probability</th></tr>{rows}</table>")


class DemoService:
    """The demo's logic on one :class:`~medadapt.ContinualVLM` (thread-safe: the model serves concurrent calls)."""

    def __init__(self, model: "ContinualVLM") -> None:
        self.model = model
        self.generative = "vqa" in model.family.tasks

    def domain_choices(self) -> list[str]:
        """``"auto"`` (when the save has a router) and every domain with labels."""
        labelled = [name for name, d in self.model.domains.items() if d.labels]
        return ([AUTO] if ROUTER_KEY in self.model.extras and labelled else []) + labelled

    def analyse(self, path: str | None, window: str = DEFAULT_WINDOW, domain: str | None = None, question: str = "") -> Analysis:
        """Read the upload at ``path`` and run the model; every medadapt error becomes ``Analysis.error``."""
        if not path:
            return Analysis(error=f"Upload an image first ({ACCEPTED}).")
        name = os.path.basename(str(path))
        try:
            upload = read_upload(path, window)
            image = upload.image
            choices = self.domain_choices()
            domain = domain or (choices[0] if choices else None)
            out = Analysis(model_input=model_input_image(image, self.model.backbone.image_processor), source=name)
            if domain == AUTO:
                routed = self.model.predict_proba([image], domain=AUTO)[0]
                out.domain = routed.domain
                how = "no domain matched well; scored by the fallback adapter" if routed.unrouted else "within its calibrated range"
                out.served = (f"Routed to **{routed.domain}** (router distance / threshold = {routed.score:.2f}: {how}; "
                              f"top label {routed.labels[int(routed.probs.argmax())]} at {float(routed.probs.max()):.1%}).")
                out.probabilities = {label: float(p) for label, p in zip(routed.labels, routed.probs)}
            elif domain is not None:
                probs = self.model.predict_proba([image], domain=domain)[0]
                labels = self.model.get_domain(domain).labels
                out.domain = domain
                out.served = f"Domain **{domain}** (chosen); top label {labels[int(probs.argmax())]} at {float(probs.max()):.1%}."
                out.probabilities = {label: float(p) for label, p in zip(labels, probs)}
            if self.generative and question.strip():
                out.answer = self.model.generate([image], questions=question.strip(), domain=out.domain or None)[0]
            return out
        except MedAdaptError as exc:
            return Analysis(error=str(exc), source=name)


def load_for_demo(source: "str | os.PathLike | ContinualVLM") -> "ContinualVLM":
    """A model from a save folder or Hub repo (or the model itself)."""
    from ..model import ContinualVLM

    return source if isinstance(source, ContinualVLM) else ContinualVLM.from_pretrained(source)


def build_demo(source: "str | os.PathLike | ContinualVLM", title: str = "medadapt demo") -> Any:
    """The Gradio ``Blocks`` page for a save folder, Hub repo id or model.

    Call ``.launch(max_file_size=MAX_UPLOAD_BYTES)`` on it (Gradio then refuses larger uploads before
    storing them; the page refuses them too)."""
    try:
        import gradio as gr
    except ImportError as exc:
        raise MissingExtraError("the demo page needs Gradio: pip install 'medadapt[demo]'.") from exc
    service = DemoService(load_for_demo(source))
    choices = service.domain_choices()

    def run(path: Any, window: str, domain: str, question: str = "") -> tuple:
        result = service.analyse(path, window, domain, question)
        served = result.served if not result.error else f"**Cannot analyse this upload:** {result.error}"
        return result.model_input, served, result.probabilities_html(), result.answer

    with gr.Blocks(title=title) as page:
        gr.Markdown(f"# {title}\n\n{NOT_FOR_CLINICAL_USE}", elem_id="medadapt-disclaimer")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label=f"Image ({ACCEPTED}; at most {MAX_UPLOAD_BYTES >> 20} MB)", type="filepath", elem_id="medadapt-upload")
                window = gr.Dropdown(WINDOW_CHOICES, value=DEFAULT_WINDOW, label="Window (DICOM / NIfTI)", elem_id="medadapt-window")
                domain = gr.Dropdown(choices, value=choices[0] if choices else None, label="Domain", elem_id="medadapt-domain")
                question = gr.Textbox(label="Question (generative models)", visible=service.generative, elem_id="medadapt-question")
                button = gr.Button("Analyse", variant="primary", elem_id="medadapt-run")
            with gr.Column():
                seen = gr.Image(label="What the model sees", type="pil", elem_id="medadapt-input")
                served = gr.Markdown(elem_id="medadapt-served")
                table = gr.HTML(elem_id="medadapt-table")
                answer = gr.Textbox(label="Answer", visible=service.generative, elem_id="medadapt-answer")
        button.click(run, [upload, window, domain, question], [seen, served, table, answer])
    return page
