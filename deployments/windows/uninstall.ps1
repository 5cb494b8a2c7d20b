<#
.SYNOPSIS
  Stops and removes certlc's Windows services installed by install.ps1.

.DESCRIPTION
  Keeps logs, Prefect's home and certlc's state in -DataDir unless -RemoveFiles is given
  (the configuration file is never removed). Run it elevated.
#>
[CmdletBinding()]
param(
    [string] $DataDir = 'C:\ProgramData\certlc',
    [switch] $RemoveFiles
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$serviceDir = Join-Path $DataDir 'service'
foreach ($id in 'certlc-webhook', 'certlc-worker') {
    $wrapper = Join-Path $serviceDir "$id.exe"
    if (-not (Get-Service -Name $id -ErrorAction SilentlyContinue)) {
        Write-Host "${id}: not installed"
        continue
    }
    if (Test-Path -LiteralPath $wrapper) {
        & $wrapper stop | Out-Null
        & $wrapper uninstall
        if ($LASTEXITCODE -ne 0) { Write-Error "WinSW could not uninstall $id (exit code $LASTEXITCODE)." }
    } else {
        Stop-Service -Name $id -ErrorAction SilentlyContinue
        & sc.exe delete $id | Out-Null
    }
    Write-Host "${id}: removed"
    if ($RemoveFiles) {
        Remove-Item -LiteralPath $wrapper, (Join-Path $serviceDir "$id.xml") -Force -ErrorAction SilentlyContinue
    }
}
if ($RemoveFiles) {
    foreach ($sub in 'logs', 'prefect', 'service') {
        Remove-Item -LiteralPath (Join-Path $DataDir $sub) -Recurse -Force -ErrorAction SilentlyContinue
    }
}
