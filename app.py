"""Hugging Face Space entry point for the medadapt demo page (Gradio SDK).

Put this file at the root of a Gradio Space, with a ``requirements.txt`` holding ``medadapt[demo]``
(and ``medadapt[dicom,nifti]`` for DICOM / NIfTI uploads), and set the Space variable
``MEDADAPT_MODEL`` to the Hub repo of your pushed stages (``model.push_to_hub("org/name")``) or a
folder in the Space. The Space runs ``python app.py``; locally, ``medadapt demo org/name`` does the
same. Uploads above ``MEDADAPT_DEMO_MAX_MB`` (default 50) are refused on the page.
"""

import os

from medadapt.webdemo import MAX_UPLOAD_BYTES, build_demo

demo = build_demo(os.environ.get("MEDADAPT_MODEL", "medadapt/demo-stages"), title=os.environ.get("MEDADAPT_TITLE", "medadapt demo"))

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_UPLOAD_BYTES)
