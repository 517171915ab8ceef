"""What hybrid_ray/ray_compat.py relies on in Ray's private modules: these fail loudly when a Ray upgrade moves it."""

import logging


def test_ray_train_reports_through_the_logger_we_quiet():
    from ray.train.v2._internal.execution import context

    from hybrid_ray.ray_compat import quiet_report_logs, report_logger

    assert context.logger is report_logger()
    quiet_report_logs()
    assert not context.logger.isEnabledFor(logging.INFO)


def test_the_token_auth_pieces_exist():
    from ray._raylet import AuthenticationTokenLoader, Config

    assert callable(Config.initialize)
    assert AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)  # conftest sets RAY_AUTH_TOKEN


def test_the_driver_log_dispatcher_exists():
    from ray._private import worker

    dispatcher = worker.global_worker_stdstream_dispatcher
    assert callable(dispatcher.add_handler) and callable(dispatcher.remove_handler)


def test_the_trainer_leaves_out_the_dataset_manager_only_without_datasets(ray_session):  # a Dataset starts Ray
    import ray.data
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks import DatasetsCallback

    from hybrid_ray.ray_compat import torch_trainer

    def kinds(**datasets):
        trainer = torch_trainer()(lambda: None, scaling_config=ScalingConfig(num_workers=1), datasets=datasets or None)
        return {type(c) for c in trainer._create_default_callbacks()}

    without, with_data = kinds(), kinds(train=ray.data.range(4))
    assert DatasetsCallback not in without and DatasetsCallback in with_data
    assert without == with_data - {DatasetsCallback}  # every other default callback stays


def test_the_trainer_leaves_out_the_placement_group_cleaner_only_when_asked():
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from hybrid_ray.ray_compat import torch_trainer

    def kinds(cleaner):
        trainer = torch_trainer(cleaner)(lambda: None, scaling_config=ScalingConfig(num_workers=1))
        return {type(c) for c in trainer._create_default_callbacks()}

    assert PlacementGroupCleanerCallback in kinds(True)
    assert kinds(False) == kinds(True) - {PlacementGroupCleanerCallback}


def test_a_record_that_ray_train_writes_reads_as_loadable(tmp_path):
    from ray.train import CheckpointConfig
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2._internal.execution.storage import StorageContext

    from hybrid_ray.ray_compat import run_record_problem

    manager = CheckpointManager(CheckpointConfig(num_to_keep=3), StorageContext(str(tmp_path), "run"))
    assert run_record_problem(manager._save_state().encode()) is None
    assert run_record_problem(b"[]").startswith("not in Ray's format: ")
