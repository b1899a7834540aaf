"""Charts for notebooks and reports: matplotlib on the Agg backend, fixed sizes, labelled axes.

Each function takes plain data (records, polars frames) and returns a ``Figure``; none reads
the database. Modules: one per subject.
"""

import matplotlib

matplotlib.use("Agg")
