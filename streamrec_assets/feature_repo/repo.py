"""Entry point for the ``feast`` CLI: exposes the StreamRec objects built from the environment
(the views' features are declared from the contracts and the published item catalogue's genres).

    streamrec feast-config            # writes $STREAMREC_HOME/feast/feature_store.yaml
    feast -c streamrec_assets/feature_repo -f $STREAMREC_HOME/feast/feature_store.yaml plan
"""

from streamrec_assets.feature_repo import feature_objects
from streamrec_assets.resources import feast_settings
from streamrec_assets.settings import get_settings

(
    user,
    user_features_source,
    user_features,
    item,
    item_features_source,
    item_features,
) = feature_objects(feast_settings(get_settings()))
