"""Reproductions as plans: ``conf/reproduce/<dataset>.yaml`` lists the runs, ``python -m mmlexp.reproduce``
runs what is missing."""
