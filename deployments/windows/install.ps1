<#
.SYNOPSIS
  Installs certlc's Windows services (Prefect worker, Event Grid webhook) with WinSW 2.x.

.DESCRIPTION
  Checks the prerequisites (the venv, the configuration file, the Prefect API's /health), writes
  the service definitions (certlc-worker.xml, certlc-webhook.xml from this folder) with this
  host's values into -ServiceDir next to a copy of WinSW, installs them, sets the SCM recovery
  actions with sc.exe and starts them. Run it elevated. Re-running it reinstalls the services.

.EXAMPLE
  .\install.ps1 -ApiUrl https://prefect.example.internal/api -Domain CONTOSO -WinSW C:\tools\WinSW-x64.exe
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $ApiUrl,
    [Parameter(Mandatory = $true)] [string] $WinSW,
    [Parameter(Mandatory = $true)] [string] $Domain,
    [string] $InstallDir = $(if (Test-Path 'D:\certlc') { 'D:\certlc' } else { 'C:\certlc' }),
    [string] $ConfigPath = 'C:\ProgramData\certlc\certlc.toml',
    [string] $DataDir = 'C:\ProgramData\certlc',
    [string] $WorkerAccount = 'certlc-worker$',
    [string] $WebhookAccount = 'certlc-webhook$',
    [int] $WorkerHealthPort = 8081,
    [switch] $SkipWebhook
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

function Fail([string] $Message) {
    Write-Error $Message -ErrorAction Continue
    exit 1
}

# --- Prerequisites --------------------------------------------------------------------------
$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Fail 'Run install.ps1 from an elevated PowerShell.'
}
if (-not (Test-Path -LiteralPath $WinSW -PathType Leaf)) {
    Fail "WinSW not found at $WinSW (download WinSW-x64.exe 2.x from https://github.com/winsw/winsw/releases)."
}
$venv = Join-Path $InstallDir '.venv\Scripts'
foreach ($exe in 'python.exe', 'prefect.exe', 'certlc.exe') {
    if (-not (Test-Path -LiteralPath (Join-Path $venv $exe) -PathType Leaf)) {
        Fail "$exe not found in $venv; create the venv first (py -3.11 -m venv .venv; .venv\Scripts\pip install .)."
    }
}
if (-not (Test-Path -LiteralPath $ConfigPath -PathType Leaf)) {
    Fail "Configuration file $ConfigPath not found."
}
$api = $ApiUrl.TrimEnd('/')
try {
    $health = Invoke-WebRequest -Uri "$api/health" -UseBasicParsing -TimeoutSec 15
    if ($health.StatusCode -ne 200) { Fail "$api/health answered $($health.StatusCode)." }
} catch {
    Fail "The Prefect API is not reachable at $api/health: $($_.Exception.Message)"
}
if (Get-Command Test-ADServiceAccount -ErrorAction SilentlyContinue) {
    foreach ($account in @($WorkerAccount) + $(if ($SkipWebhook) { @() } else { @($WebhookAccount) })) {
        if (-not (Test-ADServiceAccount -Identity $account.TrimEnd('$'))) {
            Fail "gMSA $Domain\$account cannot be used on this host (Install-ADServiceAccount / PrincipalsAllowedToRetrieveManagedPassword)."
        }
    }
} else {
    Write-Warning 'ActiveDirectory module not present: gMSA usability not checked (Test-ADServiceAccount).'
}

# --- Folders and ACLs -------------------------------------------------------------------------
$serviceDir = Join-Path $DataDir 'service'
$logDir = Join-Path $DataDir 'logs'
$prefectHome = Join-Path $DataDir 'prefect'
foreach ($dir in $DataDir, $serviceDir, $logDir, $prefectHome) {
    New-Item -ItemType Directory -Force -Path $dir | Out-Null
}
# The services write logs, Prefect's home and (by default) certlc's state under $DataDir.
# Point results_dir / state_dir in certlc.toml there (or to a share both accounts can write).
foreach ($account in @($WorkerAccount) + $(if ($SkipWebhook) { @() } else { @($WebhookAccount) })) {
    & icacls.exe $DataDir /grant "${Domain}\${account}:(OI)(CI)M" | Out-Null
    if ($LASTEXITCODE -ne 0) { Fail "icacls could not grant $Domain\$account access to $DataDir." }
}

# --- Services ---------------------------------------------------------------------------------
$services = @(
    @{ Id = 'certlc-worker'; Account = $WorkerAccount; Exe = 'prefect.exe' }
)
if (-not $SkipWebhook) {
    $services += @{ Id = 'certlc-webhook'; Account = $WebhookAccount; Exe = 'certlc.exe' }
}

foreach ($svc in $services) {
    $id = $svc.Id
    $wrapper = Join-Path $serviceDir "$id.exe"
    $xmlPath = Join-Path $serviceDir "$id.xml"

    if (Get-Service -Name $id -ErrorAction SilentlyContinue) {
        Write-Host "Reinstalling $id"
        & $wrapper stop | Out-Null
        & $wrapper uninstall | Out-Null
    }

    [xml] $doc = Get-Content -LiteralPath (Join-Path $PSScriptRoot "$id.xml") -Raw
    $s = $doc.service
    $s.executable = Join-Path $venv $svc.Exe
    $s.workingdirectory = $InstallDir
    $s.logpath = $logDir
    $s.arguments = $s.arguments.Replace('C:\ProgramData\certlc\certlc.toml', $ConfigPath)
    foreach ($var in $doc.SelectNodes('/service/env')) {
        switch ($var.GetAttribute('name')) {
            'PREFECT_API_URL' { $var.SetAttribute('value', $api) }
            'CERTLC_CONFIG' { $var.SetAttribute('value', $ConfigPath) }
            'PREFECT_HOME' { $var.SetAttribute('value', $prefectHome) }
            'PREFECT_WORKER_WEBSERVER_PORT' { $var.SetAttribute('value', [string] $WorkerHealthPort) }
        }
    }
    $s.serviceaccount.domain = $Domain
    $s.serviceaccount.user = $svc.Account
    $doc.Save($xmlPath)
    Copy-Item -LiteralPath $WinSW -Destination $wrapper -Force

    # The definition may hold secrets: Administrators, SYSTEM and the service account only.
    & icacls.exe $xmlPath /inheritance:r /grant:r 'BUILTIN\Administrators:F' 'NT AUTHORITY\SYSTEM:F' "${Domain}\$($svc.Account):R" | Out-Null

    & $wrapper install
    if ($LASTEXITCODE -ne 0) { Fail "WinSW could not install $id (exit code $LASTEXITCODE); see the Application event log." }

    # Recovery: restart after 10 s, 10 s, then every 60 s; the failure count resets after a day.
    & sc.exe failure $id reset= 86400 actions= restart/10000/restart/10000/restart/60000 | Out-Null
    if ($LASTEXITCODE -ne 0) { Fail "sc.exe failure $id failed (exit code $LASTEXITCODE)." }
    & sc.exe failureflag $id 1 | Out-Null   # also when the process exits non-zero, not only on a crash
}

# --- Start and check that they stay up (a wrapped worker once stopped after ~10 s) -------------
foreach ($svc in $services) {
    Start-Service -Name $svc.Id
}
Start-Sleep -Seconds 20
$failed = $false
foreach ($svc in $services) {
    $status = (Get-Service -Name $svc.Id).Status
    Write-Host "$($svc.Id): $status"
    if ($status -ne 'Running') { $failed = $true }
}
try {
    $worker = Invoke-WebRequest -Uri "http://127.0.0.1:$WorkerHealthPort/health" -UseBasicParsing -TimeoutSec 10
    Write-Host "certlc-worker /health: $($worker.StatusCode)"
} catch {
    Write-Warning "certlc-worker /health did not answer on port ${WorkerHealthPort}: $($_.Exception.Message)"
    $failed = $true
}
if ($failed) {
    Fail "A service is not healthy; see $logDir (*.out.log, *.err.log, *.wrapper.log) and the Application event log."
}
Write-Host "Installed. Logs: $logDir"
