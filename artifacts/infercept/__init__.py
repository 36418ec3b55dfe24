"""InferCept (ICML'24): serving LLMs that pause for tools; see README.md.

Importing the package registers InferCept's interception policy as ``"infercept"``
(:mod:`.policy`)."""

from . import policy as policy
