"""`icr-data view`: a local web app over a store, for looking at versions, pairs, prompts and
eval records in a browser, and for curating a version by hand into a new child version.

    icr-data view icr_store            # serves http://127.0.0.1:<free port>/ until Ctrl-C

Modules: app.py (routes, marks, the server), queries.py (the store, a version's dashboard, diffs,
eval rows), pairs_query.py (the pairs browser and the prompt page), textcache.py (a large
version's texts, one small batch per row, in icr-data's cache folder), charts.py (inline SVG).
Templates and static files are package data (templates/, static/).

Stable hooks for browser tests (ids unless marked `.class` or `[attribute]`):
- every page: `nav` links `#nav-store`; an error page: `#error` with `[data-status]`, its
  message in the `h1`, and an `li.problem` for each problem when there are several.
- store page: `#versions` (rows `tr.version[data-version="dataset/vN"]`, link `a.version-link`,
  per-language counts `td.langs`), `#evals` (rows `tr.eval[data-record]`, link `a.eval-link`),
  diff form `#diff-form` with `#diff-a`, `#diff-b`, `#diff-go`.
- version page: `#version-title`, `#written` (after a curated write, `[data-dropped]`), for a
  curated version `#dropped-by-hand` and `#dropped-pairs` (rows
  `tr.dropped-pair[data-dropped-key]`, cell `td.reason`), funnel
  `#funnel` (rows `tr[data-lang]`, cells `td.prompts`, `td.candidates`, `td.kept`, `td.pairs`
  with `[data-value]`), `#funnel-charts`, `#margin-histograms` (one `svg.chart-histogram` per
  language, `[data-lang]` on its wrapper), `#reward-length` (`svg.chart-scatter` per language,
  lines `line.fit-line[data-slope]`), `#trust`, `#pairs-link`, and the marks panel.
- marks panel (version, pairs and prompt pages): `#marks` (`li.mark[data-pair-key]`, each with
  a `button.unmark-button`), `#marks-count[data-count]`, `#clear-marks`, form `#write-form` with
  `#version-name` and the button `#write-version`.
- pairs browser: filter form `#filters` with `#filter-lang`, `#filter-min-margin`,
  `#filter-max-margin`, `#filter-min-len-diff`, `#filter-max-len-diff`, `#filter-q`, `#sort`,
  `#order`, `#filter-apply`; `#pairs-total[data-total]`; table `#pairs` with rows
  `tr.pair[data-pair-key][data-row]` (a JSON list: prompt_id, lang, chosen_sample_idx,
  rejected_sample_idx), cells `td.margin[data-value]`, `td.length-diff[data-value]`, a link
  `a.prompt-link`, and a `form.mark-form` (input `[name=reason]`, button `.mark-button`);
  pager `#page-prev`, `#page-next`, `#page-info`.
- prompt page: `#prompt-instruction`, `#candidates` (rows `tr.candidate[data-sample-idx]` with
  `[data-filtered]` (the filter's name or "") and `[data-roles]` ("chosen", "rejected", both or
  ""), `#why-no-pair`, `#prompt-dropped` (`li.dropped-pair[data-dropped-key]`: pairs dropped by
  hand while others remain), `#prompt-pairs` (rows `tr.pair[data-pair-key]`, with a
  `form.mark-form`).
- diff page: `#diff-recipe`, `#diff-models`, `#diff-counts`, `#diff-margins` (rows
  `tr[data-lang]`), `#overlays` (an `svg.chart-overlaid` per language).
- eval record page: `#eval-results` (rows `tr[data-judge][data-lang]`, cells `td.wr`,
  `td.se`, `td.lc`, `td.consistency`), filters `#eval-judge`, `#eval-lang`, `#eval-apply`,
  rows `#eval-rows` (`tr.eval-row`), pager `#page-prev`, `#page-next`.
"""
