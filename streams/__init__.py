"""The pure core: parse record batches, decide late, future and duplicate
events, and count windows. No I/O, clocks injected; imports nothing else of
the project, so every other package may use it.

Data flow::

    RecordBatch ──parse_records──▶ ParsedBatch ──count_windows──▶ CountedBatch
    (a source's lines)             (events as columns,            (accepted events, dead letters,
                                    dead letters)                   window counts: for the sinks)

Modules:
- the values that cross package boundaries: `batches` (the three batches),
  `events` (`Event`, `DeadLetter`, `Reason`, `WindowCount`), `event_columns`
  (events as a frame), `window_counts` (window counts as a frame);
- time: `utc` (the epoch, the instant range, text forms), `timestamps`
  (parsing and validating timestamps, durations), `windowing` (which window
  an instant falls in, the watermark);
- parsing: `formats` (the registry), `csv_parser`, `ndjson_parser`,
  `gdelt_parser`, `per_record` (the path they share), `parse_records` (the Rx
  operator), `parsed_columns` (a parsed batch across a process boundary);
- counting: `window_counter`, `rollup_windows`, `dedup_keys`, `rollups`,
  `count_windows` (the Rx operator); `pipeline` composes both operators.
"""
