"""`MMTesterMixin` (tests/mm_common.py) run for every model class x fusion pair that exists: one test class per pair,
named `Test<Class>_<fusion>`, so `pytest -k MMForConditionalGeneration_hybrid` selects one."""

from mm_common import PAIRS, MMTesterMixin


for _cls, _fusion in PAIRS:
    _name = f"Test{_cls.__name__}_{_fusion}"
    globals()[_name] = type(_name, (MMTesterMixin,), {"model_class": _cls, "fusion": _fusion})
