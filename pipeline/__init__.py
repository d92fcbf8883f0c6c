"""Connected vs engaged: streaming engagement analytics from Kafka through Faust into ClickHouse.

Importing the package first puts the compiled hot path in place when its build matches the source
(:mod:`pipeline.compiled`); ``ENGAGEMENT_COMPILED`` chooses.
"""

from pipeline.compiled import activate

activate()
