"""The CP3 checklist, the merge of several pools' verdicts, running the gate on pools."""
