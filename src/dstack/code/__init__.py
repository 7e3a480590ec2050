"""The user's code: finding its root, the ignore rules, and packing it for upload.

Standard library only, and cheap to import: tarfile is loaded only when an archive is written.
"""

from dstack.code.errors import CodeError, CodeTooLargeError
from dstack.code.ignore import IgnoreRules
from dstack.code.pack import DEFAULT_LIMIT_BYTES, PackedCode, pack_code
from dstack.code.root import find_code_root
from dstack.code.walk import CodeEntry, walk_files

__all__ = [
    "DEFAULT_LIMIT_BYTES",
    "CodeEntry",
    "CodeError",
    "CodeTooLargeError",
    "IgnoreRules",
    "PackedCode",
    "find_code_root",
    "pack_code",
    "walk_files",
]
