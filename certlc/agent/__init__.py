"""``certlc agent``: the Key Vault VM extension's job on a server, done by certlc.

* :mod:`.settings`: the extension's settings JSON as-is, plus certlc's additions per certificate;
* :mod:`.material`: a secret's value (PFX or PEM) decoded and checked into key, leaf and chain;
* :mod:`.install`: atomic per-version files, stable symlinks, pruning and rollback;
* :mod:`.poll`: one GET per observed certificate per interval, install on a new version only.
* :mod:`.deploy`: reload, verify the served certificate, roll back;
* :mod:`.winstore`: the Windows certificate store (``certificateStoreName`` on Windows);
* :mod:`.report`: the rollout report (state file, optional POST) after each pass.

Nothing here imports Prefect; the logic runs without servers.
"""
