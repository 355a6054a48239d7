"""The app page's fixed texts and its style sheet."""
import json
from pathlib import Path

ABOUT = """**MTAN** (Liu, Johns and Davison, *End-to-End Multi-Task Learning with Attention*, CVPR 2019) shares one
SegNet-style network between all tasks and gives each task a chain of small soft-attention masks, one per encoder
and decoder stage, that select from the shared features what that task needs. The masks are cheap 1x1 convolutions,
so a new task adds few parameters, and comparing them (the *Attention* section) shows which features each task
relies on. **Dynamic Weight Average (DWA)** balances the tasks during training by weighting each task's loss by how
slowly it fell over the last two epochs (a softmax with temperature 2), so that no task dominates.
[Paper](https://arxiv.org/abs/1803.10704)"""

HOW_TO_READ = """Each task multiplies the shared features by its own mask before using them: bright means the
task lets that feature through at that place, dark means it shuts it out. The view opens where the two tasks' masks
differ most for this photo; the last picture shows where they differ. Stage 1 works at the photo's full size, stage 5
at 1/16 of it."""

CSS = """
.mtan-credit {font-size: 0.8em; opacity: 0.8;}
@media (max-width: 700px) {#hero {order: -1}}
#attention-panel img {max-height: 85vh; object-fit: contain}  /* the panel's pictures stack: one screen at most */
/* the app's files to download: no remove button (they are answers, not uploads), and whole names on a phone */
#downloads .label-clear-button, #scene-downloads .label-clear-button, #masks-download .label-clear-button {display: none}
#downloads .stem, #scene-downloads .stem, #masks-download .stem {white-space: normal; overflow-wrap: anywhere}  /* on a phone the result comes first, the upload under it */
.mtan-notice {border-left: 4px solid #f59e0b; background: #fef3c7; color: #78350f; padding: 6px 12px;
             border-radius: 6px}
.mtan-error {border-left: 4px solid #dc2626; background: #fee2e2; color: #7f1d1d; padding: 6px 12px;
            border-radius: 6px; font-weight: 600}
.mtan-legend ul {list-style: none; padding: 0; margin: 4px 0; display: flex; flex-wrap: wrap; gap: 4px 14px}
.mtan-legend-item {display: flex; align-items: center; gap: 6px; font-size: 13px}
.mtan-legend-title, .mtan-colorbar-title {font-size: 13px; font-weight: 600}
.mtan-swatch {width: 14px; height: 14px; border-radius: 3px; display: inline-block;
             box-shadow: 0 0 0 1px #fff, 0 0 0 2px #0008}
.mtan-legend-share {opacity: .7}
.mtan-colorbar-bar {height: 14px; border-radius: 3px; margin: 4px 0}
.mtan-colorbar-ticks {display: flex; justify-content: space-between; font-size: 12px; text-align: center}
.mtan-colorbar-note {font-size: 12px; opacity: .75; margin-top: 4px}
@media (max-width: 640px) {  /* a phone: a smaller title, so that the first result shows without scrolling */
  #intro h1 {font-size: 1.2rem; line-height: 1.25; margin-bottom: 0.2em}
  #intro p {font-size: 0.85rem; line-height: 1.35; margin: 0}
}
"""

#: How far a drag may turn the 3D view from the view it opened with, in CSS pixels of pointer
#: travel sideways and up or down. The viewer's inertia carries a turn on after each move, so a
#: pixel is worth about a degree: 40 pixels already show the gaps a scene made from one depth map
#: has behind every object, 24 keep the scene readable.
ORBIT_PX = {"x": 24, "y": 16}

#: Run once when the page loads (``launch(js=...)``, from ``page.js`` beside this file): the Live
#: tab says when the browser has no camera to offer, or the visitor refused it (gradio's webcam
#: shows nothing then), checked again when the devices or the permission change and when a tab is
#: clicked; a bad clip gets one message, not two; and the 3D view turns only as far as it stays
#: readable (:data:`ORBIT_PX`).
PAGE_JS = (Path(__file__).with_name("page.js").read_text(encoding="utf-8")
           .replace("ORBIT_PX_JSON", json.dumps(ORBIT_PX)))
