"""Backends behind `bridge.provider.Provider`, one module per service, found by entry point.

`BUILT_IN` repeats the entry points pyproject.toml registers (a test keeps the two equal), so the
built-in providers are found without reading every installed package's metadata at start-up;
`EXTRAS` names the pip extra that brings each one's SDK, for the hint when it is missing."""

BUILT_IN = {
    "vault": "providers.vault:VaultProvider",
    "file": "providers.local:FileProvider",
    "env": "providers.local:EnvProvider",
    "aws-secretsmanager": "providers.aws_secretsmanager:SecretsManagerProvider",
    "aws-ssm": "providers.aws_ssm:ParameterStoreProvider",
    "azure-keyvault": "providers.azure_keyvault:KeyVaultProvider",
    "gcp-secretmanager": "providers.gcp_secretmanager:GcpSecretManagerProvider",
}
EXTRAS = {"vault": "vault", "aws-secretsmanager": "aws", "aws-ssm": "aws", "azure-keyvault": "azure",
          "gcp-secretmanager": "gcp"}
