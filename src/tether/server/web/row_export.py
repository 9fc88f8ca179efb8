"""The rows scripts emit, as table columns and a CSV safe in a spreadsheet: declared once in
`tether.protocol.row_csv`, which the CLI's `tether run --csv` shares."""

from tether.protocol.row_csv import (
    FORMULA_STARTS,
    HOST_COLUMN,
    cell_text,
    columns_of,
    guarded,
    rows_csv,
)

__all__ = ["FORMULA_STARTS", "HOST_COLUMN", "cell_text", "columns_of", "guarded", "rows_csv"]
