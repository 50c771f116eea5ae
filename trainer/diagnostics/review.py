"""The labels-to-check list as a review form: report.html's section where an inspector decides,
image by image, keep, relabel or drop, and downloads the decisions as corrections.csv (the
file `--corrections` reads, trainer.data.corrections).

The page stays one self-contained file that works from file:// with no server and no network:
the photos are embedded JPEGs, the form's script is inline, the download is a Blob, and earlier
decisions load back from a picked file, so a long list can be reviewed in several sittings. In
a Colab output cell (colab.ipynb's review cell) the same form gets a "Save to Drive" button that
hands the file to the kernel (google.colab.kernel.invokeFunction), which writes it where
`invoke train` picks it up.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from trainer import runfolder
from trainer.atomic import write_atomically
from trainer.data.corrections import parse_corrections

SHOWN = 500  # images in the form, the likeliest first (audit.csv's order); the rest stay in audit.csv
SIDE = 192  # pixels, the longest side of each photo: enough to judge a crack at a glance
CONFIDENT = 0.8  # the default score from which "accept every suggestion" takes a relabel
SAVE_CALLBACK = "trainer.save_corrections"  # the kernel function the Colab cell registers


def photo(path: str, side: int = SIDE) -> str:
    """An <img> of the photo as an embedded JPEG, `side` pixels at most."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            picture = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError):
        return "(image not found)"
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=82)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img src='data:image/jpeg;base64,{encoded}' alt='{html.escape(Path(path).name)}'>"


def hashes(run_dir: Path) -> dict[str, str]:
    """Each image's content hash by path (split.csv): the corrections name images by content too."""
    path = run_dir / runfolder.SPLIT
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {record["ImagePath"]: record.get("Sha256", "") for record in csv.DictReader(handle)}


def _choice(row: dict, labels: list[str]) -> str:
    options = ["<option value='keep'>keep</option>"]
    options += [f"<option value='{html.escape(label)}'>relabel to {html.escape(label)}</option>"
                for label in labels if label != row["Label"]]  # fmt: skip
    options.append("<option value='drop'>drop</option>")
    return f"<select aria-label='decision for {html.escape(Path(row['ImagePath']).name)}'>{''.join(options)}</select>"


def form(rows: list[dict], labels: list[str], sha: dict[str, str], shown: int = SHOWN) -> str:
    """The review table for audit.csv's rows (the first `shown`), its buttons and its script."""
    if not rows:
        return ""
    body = []
    for row in rows[:shown]:
        kind = row["Reason"].split(":")[0].split(" ")[0]
        attributes = {
            "data-path": row["ImagePath"], "data-sha": sha.get(row["ImagePath"], ""), "data-label": row["Label"],
            "data-suggested": row["SuggestedLabel"], "data-score": row["Score"], "data-kind": kind,
        }  # fmt: skip
        cells = "".join(f" {key}='{html.escape(value, quote=True)}'" for key, value in attributes.items())
        suggestion = row["SuggestedLabel"] if row["SuggestedLabel"] != row["Label"] else "-"
        body.append(
            f"<tr{cells}><td>{photo(row['ImagePath'])}</td><td>{html.escape(Path(row['ImagePath']).name)}</td>"
            f"<td>{html.escape(row['Label'])}</td><td>{html.escape(suggestion)}</td>"
            f"<td>{float(row['Score']):.3f}</td><td>{html.escape(row['Reason'])}</td>"
            f"<td>{_choice(row, labels)}</td></tr>"
        )
    more = (
        f" The form holds the first {shown}; <code>{runfolder.AUDIT}</code> lists all {len(rows)}, and a corrections "
        "file can name any image."
        if len(rows) > shown
        else ""
    )
    controls = (
        "<div class='review-controls'>"
        f"<button type='button' id='review-accept'>Accept every relabel suggestion scored at least</button> "
        f"<input type='number' id='review-threshold' value='{CONFIDENT}' min='0' max='1' step='0.05' "
        "aria-label='score threshold'> "
        "<button type='button' id='review-download'>Download corrections.csv</button> "
        "<button type='button' id='review-save' hidden>Save to Drive</button> "
        "<label>Load earlier decisions: <input type='file' id='review-load' accept='.csv,text/csv'></label> "
        "<span id='review-status' role='status'></span></div>"
    )
    header = ("<tr><th>photo</th><th>file</th><th>label</th><th>suggested</th><th>score</th><th>why</th>"
              "<th>decision</th></tr>")  # fmt: skip
    return (
        "<p><b>Review:</b> decide for each image: keep its label, relabel it, or drop it. Download the decisions as "
        "<code>corrections.csv</code> and train with <code>--corrections corrections.csv</code> (<code>invoke train "
        "--corrections FILE</code>); the cached features are reused, so the retrain takes seconds. Decisions load "
        f"back from that file to go on later.{more}</p>"
        + controls
        + f"<table class='review'>{header}{''.join(body)}</table>"
        + f"<script>{SCRIPT.replace('SAVE_CALLBACK', json.dumps(SAVE_CALLBACK))}</script>"
    )


# The form's behaviour: plain DOM, no library, nothing fetched.
SCRIPT = r"""
(function () {
  const rows = Array.from(document.querySelectorAll('table.review tr[data-path]'));
  const status = document.getElementById('review-status');
  const quote = (text) => /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  function decided() {
    return rows.filter((row) => row.querySelector('select').value !== 'keep');
  }
  function csvText() {
    const lines = ['ImagePath,Label,Sha256'];
    for (const row of decided()) {
      lines.push([row.dataset.path, row.querySelector('select').value, row.dataset.sha].map(quote).join(','));
    }
    return lines.join('\n') + '\n';
  }
  function say(text) { status.textContent = text; }
  function count() {
    const chosen = decided();
    const dropped = chosen.filter((row) => row.querySelector('select').value === 'drop').length;
    say(`${chosen.length - dropped} relabelled, ${dropped} dropped of ${rows.length}`);
  }
  rows.forEach((row) => row.querySelector('select').addEventListener('change', count));
  document.getElementById('review-accept').addEventListener('click', () => {
    const threshold = parseFloat(document.getElementById('review-threshold').value);
    for (const row of rows) {
      const select = row.querySelector('select');
      if (row.dataset.kind === 'label' && parseFloat(row.dataset.score) >= threshold &&
          Array.from(select.options).some((option) => option.value === row.dataset.suggested)) {
        select.value = row.dataset.suggested;
      }
    }
    count();
  });
  document.getElementById('review-download').addEventListener('click', () => {
    const link = document.createElement('a');
    link.href = URL.createObjectURL(new Blob([csvText()], {type: 'text/csv'}));
    link.download = 'corrections.csv';
    document.body.appendChild(link);
    link.click();
    link.remove();
    say('corrections.csv downloaded: ' + status.textContent);
  });
  function parse(text) {
    const records = [];
    let record = [], cell = '', quoted = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; }
        else if (c === '"') quoted = false;
        else cell += c;
      } else if (c === '"') quoted = true;
      else if (c === ',') { record.push(cell); cell = ''; }
      else if (c === '\n' || c === '\r') {
        if (c === '\r' && text[i + 1] === '\n') i++;
        record.push(cell); records.push(record); record = []; cell = '';
      } else cell += c;
    }
    if (cell || record.length) { record.push(cell); records.push(record); }
    return records;
  }
  document.getElementById('review-load').addEventListener('change', (event) => {
    const file = event.target.files[0];
    if (!file) return;
    file.text().then((text) => {
      const records = parse(text.replace(/^\uFEFF/, ''));
      const header = (records.shift() || []).map((name) => name.trim().toLowerCase());
      const at = {path: header.indexOf('imagepath'), label: header.indexOf('label'), sha: header.indexOf('sha256')};
      let applied = 0, unknown = 0;
      for (const record of records) {
        if (record.length < 2) continue;
        const sha = at.sha >= 0 ? (record[at.sha] || '').trim().toLowerCase() : '';
        const path = (record[at.path] || '').trim(), label = (record[at.label] || '').trim();
        const row = rows.find((r) => (sha && r.dataset.sha === sha) || r.dataset.path === path);
        const select = row && row.querySelector('select');
        const value = label.toLowerCase() === 'drop' ? 'drop' : label === (row && row.dataset.label) ? 'keep' : label;
        if (select && Array.from(select.options).some((option) => option.value === value)) {
          select.value = value; applied++;
        } else unknown++;
      }
      count();
      say(`loaded ${applied} decision(s)` + (unknown ? `, ${unknown} not in this list` : '') + '; ' + status.textContent);
    });
  });
  const colab = window.google && google.colab && google.colab.kernel;
  if (colab) {
    const save = document.getElementById('review-save');
    save.hidden = false;
    save.addEventListener('click', () => {
      google.colab.kernel.invokeFunction(SAVE_CALLBACK, [csvText()], {})
        .then((reply) => say('saved: ' + ((reply.data && reply.data['text/plain']) || 'done')));
    });
  }
  count();
})();
"""


# ---------------------------------------------------------------------------------------------
# In a notebook (colab.ipynb's review cell): the form of a published model, and its save button's
# kernel side


def corrections_beside(published: str | Path) -> Path:
    """Where the review form saves a published model's corrections, and `invoke train` looks:
    NAME-corrections.csv beside the published NAME/ folder (publishing replaces the folder; the
    decisions must outlive it)."""
    published = Path(published)
    return published.with_name(f"{published.name}-corrections.csv")


def published_form(published: str | Path) -> str:
    """The review form of a published run (its audit.csv, labels and split), as HTML for a
    notebook's output."""
    published = Path(published)
    rows = runfolder.read_audit(published / runfolder.AUDIT)
    if not rows:
        return f"<p>No labels to check in {html.escape(str(published))} (no audit.csv, or it lists nothing).</p>"
    labels = (published / runfolder.LABELS).read_text(encoding="utf-8").split()
    saved = corrections_beside(published)
    where = f"<p>Save to Drive writes <code>{html.escape(str(saved))}</code>; rerun the job cell to train with it.</p>"
    return f"<style>table.review img {{ max-width: {SIDE}px; }}</style>{where}" + form(rows, labels, hashes(published))


def save_beside(published: str | Path, text: str) -> str:
    """The save button's kernel side: the form's CSV checked as --corrections reads it, then
    written whole (temporary name, renamed) beside the published model. Returns what to say."""
    target = corrections_beside(published)
    decisions = parse_corrections(text, target)
    write_atomically(target, text)
    return f"{len(decisions)} decision(s) in {target}; rerun the job cell to retrain with them"
