"""The audit record: evaluations turned into ``results.json`` entries and evidence files.

``writer`` keeps the record and writes it atomically (torch-free: the pytest plugin uses
it before anything heavy loads); ``entries`` summarises the engine's logged evaluations,
``images`` draws the example images, ``evidence`` saves a claim's arrays (counterexamples),
``diagnostics`` questions the attacks' strength, ``baseline`` compares the run with an
earlier run's record (``baseline_table`` puts the comparison in words).  The
report (:mod:`audit.report`) reads only what these write.
"""
