"""Curation and tokenization: sources, heuristics, dedup, the Phi-1 edu classifier, decontamination,
tokenizer and packed mixtures (see README.md; `plan.run_curation` runs them all)."""
