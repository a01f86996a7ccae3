"""Lowering: the only code that knows Core ML's constexpr op signatures.

`lower(params, const)` writes a compressed form as the constexpr ops the program's opset supports;
`read_back(var)` turns any constexpr chain back into a form and a dense value.
"""

from milcompress.lowering.emit import check_target, config_required_target, lower, lower_fake, opset_error, required_target
from milcompress.lowering.read import ReadBack, chain_of, is_constexpr, read_back

__all__ = ["ReadBack", "chain_of", "check_target", "config_required_target", "is_constexpr", "lower", "lower_fake", "opset_error", "read_back", "required_target"]
