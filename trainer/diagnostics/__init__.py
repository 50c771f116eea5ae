"""What is drawn and checked about a model after it has landed, none of it at its cost.

table.py      DIAGNOSTICS, one row per diagnostic (name, when it applies, the function, its
              section of the report)
runner.py     runs the rows after the model has landed, recording each outcome in manifest.json
audit.py      the label audit: unlikely labels, near-duplicates, outliers
explain.py    class activation maps
pictures.py   learning curves, confusion matrix, contact sheets
report.py     report.html, from the run folder's files alone
sections.py   the report's pieces (a table, a picture) and the diagnostics' sections
"""
