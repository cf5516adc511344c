"""The health model and the metrics registry: leaves that every layer
(producers, consumers, the daemon) may report to, importing nothing of ours."""
