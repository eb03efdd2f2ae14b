"""The Kubernetes source: list and watch the budget resources, write their status back.

`reflector` keeps a current copy of one collection (list, watch, bookmarks, relist on 410
Gone, backoff); `source` turns every object into one `Config`, one object's problems never
blocking another's; `status` says what each policy and budget reports; `lease` elects the
one replica that writes it.
"""
