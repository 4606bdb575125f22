"""The download stage: input readers, the safe fetcher, image processing, the per-shard worker
and the job. ``mmdata.download(...)`` runs the job (:func:`mmdata.download.job.download`), with
mmdata's option names or img2dataset's (:mod:`mmdata.download.img2dataset_options`)."""

from mmdata._callable import make_package_callable

make_package_callable(__name__, "mmdata.download.job.download")
