# Report-only helpers live in workflow/report/ (captions); no rules needed yet.
