"""The platform's container images, built from this repository and pinned by digest.

Every workload runs an image built from `services/Dockerfile`: the services, the gateway
(HAProxy), PostgreSQL with pgBackRest, PgPool-II and Redis all come from Debian's packages,
the same versions the local platform and the tests run. Artifact Registry holds them; pods
reference `repo/name@sha256:...`, never a moving tag. CI can
instead hand in images it built, by digest, through stack config (`images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_docker_build as docker_build
from pulumi_gcp import artifactregistry, organizations

ImageTarget = Literal["service", "gateway", "postgres", "pgpool", "redis", "memcached"]
IMAGE_TARGETS: tuple[ImageTarget, ...] = (
    "service",
    "gateway",
    "postgres",
    "pgpool",
    "redis",
    "memcached",
)
DOCKERFILE = "services/Dockerfile"


@dataclass
class ImagesArgs:
    project: str
    region: str
    labels: dict[str, str]
    context: str = "."
    # Prebuilt images by target (`repo@sha256:...`); a target listed here is not built.
    prebuilt: dict[str, str] = field(default_factory=dict)


class PlatformImages(pulumi.ComponentResource):
    refs: dict[ImageTarget, pulumi.Output[str]]

    def __init__(self, name: str, args: ImagesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("platform:build:PlatformImages", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.refs = {
            t: pulumi.Output.from_input(args.prebuilt[t])
            for t in IMAGE_TARGETS
            if t in args.prebuilt
        }
        to_build = [t for t in IMAGE_TARGETS if t not in args.prebuilt]
        if to_build:
            repository = artifactregistry.Repository(
                f"{name}-registry",
                repository_id=name,
                location=args.region,
                format="DOCKER",
                # Pods pin images by digest; the per-stack tag only helps humans find a build.
                docker_config=artifactregistry.RepositoryDockerConfigArgs(immutable_tags=False),
                labels=args.labels,
                opts=child,
            )
            host = f"{args.region}-docker.pkg.dev"
            registry = docker_build.RegistryArgs(
                address=host,
                username="oauth2accesstoken",
                password=organizations.get_client_config_output().access_token,
            )
            for target in to_build:
                image = docker_build.Image(
                    f"{name}-{target}",
                    context=docker_build.BuildContextArgs(location=args.context),
                    dockerfile=docker_build.DockerfileArgs(location=DOCKERFILE),
                    target=target,
                    platforms=[docker_build.Platform.LINUX_AMD64],
                    push=True,
                    registries=[registry],
                    tags=[
                        repository.repository_id.apply(
                            lambda repo, t=target: (
                                f"{host}/{args.project}/{repo}/{t}:{pulumi.get_stack()}"
                            )
                        )
                    ],
                    opts=child,
                )
                # `ref` is `tag@sha256:digest`: what was pushed, immutably.
                self.refs[target] = image.ref
        self.register_outputs({"refs": self.refs})
