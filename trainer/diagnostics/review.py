"""The labels-to-check list as a review form: report.html's section where an inspector decides,
image by image, keep, relabel or drop, and downloads the decisions as corrections.csv (the
file `--corrections` reads, trainer.data.corrections, and adds to the dataset's record).

The page stays one self-contained file that works from file:// with no server and no network:
the photos are embedded JPEGs, the form's script is inline, the download is a Blob, and earlier
decisions load back from a picked file, so a long list can be reviewed in several sittings. In
a Colab output cell (colab.ipynb's review cell) the same form gets a "Save to Drive" button that
hands the decisions to the kernel (google.colab.kernel.invokeFunction), which adds them to the
dataset's record (trainer/record.py), where every later `invoke train` reads them.

What the dataset's record already says is shown: each listed photo's earlier decision, and how
many photos were kept earlier and are not listed again. A kept photo is listed again only when
the audit's opinion of it has changed: its reason (a doubted label, a near-duplicate, an outlier)
or the label it suggests is not what it was when the photo was kept (`opinion`).

Suggestions are accepted in bulk one direction at a time (CD -> UD apart from UD -> CD), each
showing how many undecided photos it would change at the chosen score before it changes any,
under a caution that accepting unseen is unsafe. Nothing is ticked unless the run has a recall
target; then only the directions into its class are, since that class's misses are the costly
ones, and a direction out of it stays locked until the inspector unlocks it and reads what it
risks (`recall_target`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections import Counter
from pathlib import Path

from trainer import record, runfolder
from trainer.config import parse_target
from trainer.data.corrections import KEEP, Correction, parse_corrections, read_corrections
from trainer.errors import InputError, counted, os_error_sentence

SHOWN = 500  # images in the form, the likeliest first (audit.csv's order); the rest stay in audit.csv
SIDE = 192  # pixels, the longest side of each photo: enough to judge a crack at a glance
CONFIDENT = 0.8  # the default score from which a direction's bulk acceptance takes a relabel
UNSEEN = "27 of the 93"  # ACCURACY.md's simulated inspector: its suggestions accepted unseen that were wrong
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


def run_form(run_dir: Path, rows: list[dict], labels: list[str]) -> str:
    """A run's form, with the decisions that were in force when it trained (its corrections.csv):
    what the dataset's record said then."""
    path = run_dir / runfolder.CORRECTIONS
    earlier = record.latest(read_corrections(path)) if path.is_file() else {}
    said = f"When this run trained, the dataset's record (this run's copy: {runfolder.CORRECTIONS}) held"
    target = recall_target(run_dir, labels)
    return form(rows, labels, hashes(run_dir), earlier=earlier, where=said, target=target)


def recall_target(run_dir: Path, labels: list[str]) -> tuple[str, float] | None:
    """The run's --target-recall (config.json) as (class, recall): the class whose misses are
    costly, which the form never moves photos out of by default. None without one, and for a
    folder from elsewhere whose target does not parse or names none of `labels`: then nothing
    is ticked at all."""
    text = runfolder.read_settings(run_dir).get("target_recall")
    if not isinstance(text, str):
        return None
    try:
        label, recall = parse_target(text)
    except InputError:
        return None
    return (label, recall) if label in labels else None


def opinion(row: dict) -> str:
    """What the audit thinks of an audit.csv row: its reason's kind and the label it suggests
    ("label:UD", "near-duplicate:CD"). A keep is remembered with it; when it changes, the photo
    is listed again."""
    kind = row["Reason"].split(":")[0].split(" ")[0]
    return f"{kind}:{row['SuggestedLabel']}"


def _choice(row: dict, labels: list[str]) -> str:
    options = ["<option value=''>undecided</option>", "<option value='keep'>keep</option>"]
    options += [f"<option value='{html.escape(label)}'>relabel to {html.escape(label)}</option>"
                for label in labels if label != row["Label"]]  # fmt: skip
    options.append("<option value='drop'>drop</option>")
    return f"<select aria-label='decision for {html.escape(Path(row['ImagePath']).name)}'>{''.join(options)}</select>"


def _earlier(decision: Correction | None) -> str:
    if decision is None:
        return ""
    what = {"keep": "kept", "drop": "dropped"}.get(decision.kind, f"relabelled {decision.label}")
    when = decision.decided[:10]
    thought = f", when the audit said {decision.opinion}" if decision.opinion else ""
    return html.escape(f"{what} {when}{thought}")


def listed_again(rows: list[dict], sha: dict[str, str], earlier: dict[str, Correction]) -> tuple[list[dict], int]:
    """audit.csv's rows the form lists (all but photos kept under the same opinion) and how many
    kept photos it leaves out."""
    out, left_out = [], 0
    for row in rows:
        decision = earlier.get(sha.get(row["ImagePath"], ""))
        if decision is not None and decision.kind == KEEP and decision.opinion == opinion(row):
            left_out += 1
        else:
            out.append(row)
    return out, left_out


def form(rows: list[dict], labels: list[str], sha: dict[str, str], shown: int = SHOWN,
         earlier: dict[str, Correction] | None = None, where: str = "",
         target: tuple[str, float] | None = None) -> str:  # fmt: skip
    """The review table for audit.csv's rows (the first `shown` the record does not settle), its
    buttons and its script. `earlier`: the dataset's decisions so far, by content hash; `where`
    begins the sentence that counts them ("The dataset's record (...) holds"); `target`: the
    run's recall target (`recall_target`), whose class no bulk default moves photos out of."""
    earlier = earlier or {}
    rows, left_out = listed_again(rows, sha, earlier)
    summary = _earlier_summary(earlier, left_out, where)
    if not rows:
        return summary
    body = [_form_row(row, labels, sha, earlier) for row in rows[:shown]]
    more = (
        f" The form holds the first {shown}; <code>{runfolder.AUDIT}</code> lists all {len(rows)}, and a corrections "
        "file can name any image."
        if len(rows) > shown
        else ""
    )
    controls = (
        "<div class='review-controls'>"
        "<button type='button' id='review-download'>Download corrections.csv</button> "
        "<button type='button' id='review-save' hidden>Save to Drive</button> "
        "<label>Load earlier decisions: <input type='file' id='review-load' accept='.csv,text/csv'></label> "
        "<span id='review-status' role='status'></span></div>"
    )
    header = ("<tr><th>photo</th><th>file</th><th>label</th><th>suggested</th><th>score</th><th>why</th>"
              "<th>earlier</th><th>decision</th></tr>")  # fmt: skip
    return (
        "<p><b>Review:</b> decide for each image: keep its label, relabel it, or drop it (undecided ones are left "
        "for later). Download the decisions as <code>corrections.csv</code> and train with <code>invoke train "
        "--corrections corrections.csv</code>: they join the dataset's record, so every later <code>invoke setup "
        "train</code> keeps them. The retrain featurizes nothing again (the features are cached by content) and "
        "its head trains in seconds; the audit, the heatmaps and the exports after it take a minute or two on a "
        "2-core CPU (the shipped 400 photos: 2 min 20 s on a busy one). Its report scores the model before beside "
        "the new one on the same test photos, so that what the relabels alone change is not read as a better model. "
        "A photo you "
        f"keep is not listed again while the audit's opinion of it stays the same.{more}</p>"
        + summary
        + _bulk(rows[:shown], labels, target)
        + controls
        + f"<table class='review'>{header}{''.join(body)}</table>"
        + f"<script>{SCRIPT.replace('SAVE_CALLBACK', json.dumps(SAVE_CALLBACK))}</script>"
    )


def _attribute(value: str) -> str:
    # A carriage return as a reference: a browser reads a bare one in an attribute as a line feed,
    # and the path would then come back changed in corrections.csv.
    return html.escape(value).replace(chr(13), "&#13;")


def suggests_relabel(row: dict, labels: list[str]) -> bool:
    """Whether bulk acceptance may take this row's suggestion: a doubted label (not a
    near-duplicate or an outlier) whose suggested class is another class of the form's."""
    return (
        opinion(row).startswith("label:") and row["SuggestedLabel"] != row["Label"] and row["SuggestedLabel"] in labels
    )


def directions(rows: list[dict], labels: list[str]) -> list[tuple[str, str, int]]:
    """Each (from, to) pair among the rows' relabel suggestions with how many suggest it, the
    most suggested first."""
    counts = Counter((row["Label"], row["SuggestedLabel"]) for row in rows if suggests_relabel(row, labels))
    return [(old, new, count) for (old, new), count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def _bulk(rows: list[dict], labels: list[str], target: tuple[str, float] | None) -> str:
    """Bulk acceptance, a direction per line with the photos it would change at the chosen score
    (the script keeps the count as the score and the decisions change). With a recall target the
    directions into its class are ticked to begin with and those out of it are locked until the
    inspector unlocks them; without one nothing is ticked."""
    found = directions(rows, labels)
    if not found:
        return ""
    guarded = target[0] if target else None
    lines = []
    for old, new, count in found:
        confident = sum(1 for row in rows if (row["Label"], row["SuggestedLabel"]) == (old, new)
                        and suggests_relabel(row, labels) and float(row["Score"]) >= CONFIDENT)  # fmt: skip
        state = " checked" if new == guarded else " disabled" if old == guarded else ""
        lines.append(
            f"<tr><td><label><input type='checkbox' class='review-direction' data-from='{_attribute(old)}' "
            f"data-to='{_attribute(new)}' data-out='{'yes' if old == guarded else 'no'}'{state}> "
            f"{html.escape(f'{old} -> {new}')}</label></td><td>({count} suggested)</td>"
            f"<td class='review-count'>{confident} would change</td></tr>"
        )
    return (
        "<fieldset class='review-bulk'><legend>Accept suggestions in bulk, one direction at a time</legend>"
        "<p><b>Caution: accepting suggestions you have not looked at is unsafe.</b> The audit can be wrong: in "
        f"ACCURACY.md's simulated inspector, {UNSEEN} suggestions accepted unseen were wrong, each a wrong label "
        "put in. Look at the photos first; this is for a list you have looked at. Photos already decided (by hand "
        "or loaded) are left as decided.</p>"
        f"<label>Score at least <input type='number' id='review-threshold' value='{CONFIDENT}' min='0' max='1' "
        "step='0.05'></label>"
        f"<table class='review-directions'>{''.join(lines)}</table>"
        + _unlock(found, guarded, target)
        + "<button type='button' id='review-accept' disabled>Accept the ticked directions</button></fieldset>"
    )


def _unlock(found: list[tuple[str, str, int]], guarded: str | None, target: tuple[str, float] | None) -> str:
    """The deliberate extra step before a direction out of the recall target's class can be ticked,
    and what it risks."""
    if target is None:
        return "<p>This run has no recall target, so no direction is ticked: tick the one you have looked at.</p>"
    name, named = html.escape(guarded), html.escape(f"{guarded}={target[1]:g}")
    said = (
        f"<p>Ticked to begin with: the directions into {name}, the class the run's recall target names ({named}); "
        "a wrong one there costs a false alarm, not a miss.</p>"
        if any(new == guarded for _, new, _ in found)
        else f"<p>No direction is ticked: none moves photos into {name}, the class the run's recall target names "
        f"({named}).</p>"
    )
    if not any(old == guarded for old, _, _ in found):
        return said
    return said + (
        f"<p><label><input type='checkbox' id='review-unlock'> Unlock the directions out of {name}.</label> "
        f"Its misses are the costly ones: each photo moved out of {name} unseen may be one of them, and a model "
        f"trained on it learns to miss photos like it. Unlocking ticks nothing; tick a direction out of {name} "
        "only for photos you have looked at.</p>"
    )


def _form_row(row: dict, labels: list[str], sha: dict[str, str], earlier: dict[str, Correction]) -> str:
    attributes = {
        "data-path": row["ImagePath"], "data-sha": sha.get(row["ImagePath"], ""), "data-label": row["Label"],
        "data-suggested": row["SuggestedLabel"], "data-score": row["Score"], "data-kind": opinion(row).split(":")[0],
        "data-opinion": opinion(row),
    }  # fmt: skip
    cells = "".join(f" {key}='{_attribute(value)}'" for key, value in attributes.items())
    suggestion = row["SuggestedLabel"] if row["SuggestedLabel"] != row["Label"] else "-"
    before = _earlier(earlier.get(sha.get(row["ImagePath"], "")))
    return (
        f"<tr{cells}><td>{photo(row['ImagePath'])}</td><td>{html.escape(Path(row['ImagePath']).name)}</td>"
        f"<td>{html.escape(row['Label'])}</td><td>{html.escape(suggestion)}</td>"
        f"<td>{float(row['Score']):.3f}</td><td>{html.escape(row['Reason'])}</td><td>{before}</td>"
        f"<td>{_choice(row, labels)}</td></tr>"
    )


def _earlier_summary(earlier: dict[str, Correction], left_out: int, where: str) -> str:
    """`where` says whose decisions these are: "The dataset's record (...) holds"."""
    if not earlier:
        return ""
    kinds = [decision.kind for decision in earlier.values()]
    counts = ", ".join(f"{kinds.count(kind)} {word}" for kind, word in
                       (("relabel", "relabelled"), ("drop", "dropped"), ("keep", "kept")) if kinds.count(kind))  # fmt: skip
    hidden = (f" {counted(left_out, 'photo')} kept earlier {'is' if left_out == 1 else 'are'} not listed again: the "
              f"audit's opinion of {'it' if left_out == 1 else 'them'} is unchanged." if left_out else "")  # fmt: skip
    return f"<p>{html.escape(where)} {counted(len(kinds), 'earlier decision')} ({counts}).{hidden}</p>"


# The form's behaviour: plain DOM, no library, nothing fetched.
SCRIPT = r"""
(function () {
  const rows = Array.from(document.querySelectorAll('table.review tr[data-path]'));
  const status = document.getElementById('review-status');
  // Each cell safe to open in a spreadsheet, by trainer/cells.py's rule: a leading quote before
  // a formula's first character (a plain number excepted) or before a quote, removed on reading.
  const NUMBER = /^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/;
  const safe = (text) => text.startsWith("'") || (/^[=+\-@\t\r]/.test(text) && !NUMBER.test(text)) ? "'" + text : text;
  const unsafe = (text) => text.startsWith("'") ? text.slice(1) : text;
  const csvCell = (text) => /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  const quote = (text) => csvCell(safe(text));
  function decided() {
    return rows.filter((row) => row.querySelector('select').value !== '');
  }
  function csvText() {
    const lines = ['ImagePath,Label,Sha256,Opinion'];
    for (const row of decided()) {
      const value = row.querySelector('select').value;
      lines.push([row.dataset.path, value, row.dataset.sha, row.dataset.opinion].map(quote).join(','));
    }
    return lines.join('\n') + '\n';
  }
  function say(text) { status.textContent = text; }
  const counted = (count, noun) => `${count} ${noun}${count === 1 ? '' : 's'}`;  // trainer.errors.counted
  function count() {
    const values = decided().map((row) => row.querySelector('select').value);
    const dropped = values.filter((value) => value === 'drop').length;
    const kept = values.filter((value) => value === 'keep').length;
    say(`${values.length - dropped - kept} relabelled, ${dropped} dropped, ${kept} kept of ${rows.length}`);
    tally();
  }
  // Bulk acceptance, one direction at a time: each direction's count is the undecided photos it
  // would change at the chosen score, kept as the score and the decisions change, so it is read
  // before anything changes. A direction out of the recall target's class (data-out) stays
  // locked until the unlock box is ticked.
  const threshold = document.getElementById('review-threshold');
  const accept = document.getElementById('review-accept');
  const unlock = document.getElementById('review-unlock');
  const directions = Array.from(document.querySelectorAll('input.review-direction'));
  const offers = (row, value) => Array.from(row.querySelector('select').options).some((option) => option.value === value);
  const locked = (box) => box.dataset.out === 'yes' && !(unlock && unlock.checked);
  function score() {
    const value = parseFloat(threshold.value);
    return value >= 0 && value <= 1 ? value : NaN;
  }
  function would(box) {
    const at = score();
    return rows.filter((row) => row.dataset.kind === 'label' && row.dataset.label === box.dataset.from &&
      row.dataset.suggested === box.dataset.to && parseFloat(row.dataset.score) >= at &&
      row.querySelector('select').value === '' && offers(row, box.dataset.to));
  }
  function tally() {
    let total = 0;
    for (const box of directions) {
      const changes = would(box).length;
      box.closest('tr').querySelector('.review-count').textContent =
        isNaN(score()) ? 'the score must be from 0 to 1' : `${changes} would change`;
      if (box.checked && !locked(box)) total += changes;
    }
    if (accept) {
      accept.disabled = total === 0;
      accept.textContent = `Accept the ticked directions: ${counted(total, 'photo')} would change`;
    }
  }
  function lock() {
    for (const box of directions.filter((box) => box.dataset.out === 'yes')) {
      box.disabled = locked(box);
      box.checked = false;  // locking or unlocking ticks nothing
    }
    tally();
  }
  // A page reloaded from history keeps its boxes' state in some browsers: start from the page's.
  directions.forEach((box) => { box.checked = box.defaultChecked; box.addEventListener('change', tally); });
  if (unlock) { unlock.checked = false; unlock.addEventListener('change', lock); }
  if (threshold) { threshold.addEventListener('input', tally); threshold.addEventListener('change', tally); }
  if (accept) accept.addEventListener('click', () => {
    const accepted = [];
    for (const box of directions.filter((box) => box.checked && !locked(box))) {
      const changes = would(box);
      changes.forEach((row) => { row.querySelector('select').value = box.dataset.to; });
      if (changes.length) accepted.push(`${changes.length} ${box.dataset.from} -> ${box.dataset.to}`);
    }
    count();
    say(`accepted ${accepted.join(', ') || 'nothing'}; ${status.textContent}`);
  });
  rows.forEach((row) => row.querySelector('select').addEventListener('change', count));
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
    return records.map((cells) => cells.map(unsafe));
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
      say(`loaded ${counted(applied, 'decision')}` + (unknown ? `, ${unknown} not in this list` : '') + '; ' + status.textContent);
    });
  });
  const colab = window.google && google.colab && google.colab.kernel;
  if (colab) {
    const save = document.getElementById('review-save');
    save.hidden = false;
    save.addEventListener('click', () => {
      google.colab.kernel.invokeFunction(SAVE_CALLBACK, [csvText()], {})
        .then((reply) => say((reply.data && reply.data['text/plain']) || 'saved'))
        .catch((error) => say('not saved: ' + error));
    });
  }
  lock();
  count();
})();
"""


# ---------------------------------------------------------------------------------------------
# In a notebook (colab.ipynb's review cell): the form of a published model with the dataset's
# record, and its save button's kernel side


def published_form(published: str | Path, record_folder: str | Path | None = None) -> str:
    """The review form of a published run (its audit.csv, labels and split) with the earlier
    decisions of the dataset's record (default: beside the published folder), as HTML for a
    notebook's output."""
    published = Path(published)
    record_folder = record.beside(published) if record_folder is None else Path(record_folder)
    rows = runfolder.read_audit(published / runfolder.AUDIT)
    if not rows:
        return f"<p>No labels to check in {html.escape(str(published))} (no audit.csv, or it lists nothing).</p>"
    labels = runfolder.read_labels([published / runfolder.LABELS], published)
    where = (f"<p>Save to Drive adds your decisions to the dataset's record, <code>{html.escape(str(record_folder))}"
             "</code>; rerun the job cell to train with them.</p>")  # fmt: skip
    earlier = record.latest(record.read_decisions(record_folder))
    return (f"<style>table.review img {{ max-width: {SIDE}px; }}</style>{where}"
            + form(rows, labels, hashes(published), earlier=earlier, target=recall_target(published, labels),
                   where=f"The dataset's record ({record_folder}) holds"))  # fmt: skip


def save_to_record(record_folder: str | Path, text: str) -> str:
    """The save button's kernel side: the form's CSV checked as a corrections file is read, then
    added to the dataset's record (a new file of it, whole: trainer/record.py). Returns what to
    say on the page, a refusal included: the page shows the answer, never a traceback."""
    record_folder = Path(record_folder)
    try:
        decisions = parse_corrections(text, "the form's decisions", what="Save to Drive")
        added = record.add(record_folder, decisions)
    except InputError as error:
        return f"not saved: {error}"
    except OSError as error:
        return f"not saved: {os_error_sentence(error, record_folder, doing='writing the dataset record')}"
    already = len(decisions) - len(added)
    return (f"{counted(len(added), 'decision')} added to the dataset's record {record_folder}"
            + (f" ({already} it held already)" if already else "") + "; rerun the job cell to retrain with them")  # fmt: skip


def save_beside(published: str | Path, text: str) -> str:
    """What colab.ipynb's review cell called before the record: the same save, beside `published`."""
    return save_to_record(record.beside(Path(published)), text)
