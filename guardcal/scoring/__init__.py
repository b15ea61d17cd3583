"""The shared decision-token scorer (``scorer.HFScorer``) and its forward mechanics.

Used by evaluation, post-hoc calibration, training evaluation and the transformers serving
backend; it sits at the backends' level (imports ``core`` only, plus torch and transformers).
"""
